//! `plumber new`: a buildable pipe project (a stateful word counter with a
//! native test and a pipeline to run it) in Rust, Go, Python or JavaScript,
//! from the templates under `templates/`, carried in the binary.

use std::path::{Path, PathBuf};

use crate::build::{Language, WIT};

/// Why a project could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// The name cannot name a crate, module or package.
    #[error("`{0}` is not a usable pipe name: use a lowercase letter, then lowercase letters, digits, `-` or `_`")]
    BadName(String),
    /// The directory exists.
    #[error("`{0}` already exists")]
    Exists(PathBuf),
    /// The SDK the project depends on was not found.
    #[error("cannot find the plumber {language} SDK at `{path}`; pass --sdk <plumber checkout>/guest-sdk")]
    NoSdk {
        /// The language.
        language: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file could not be written.
    #[error("`{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Template files of each language: (path in the project, contents).
fn files(language: Language) -> &'static [(&'static str, &'static str)] {
    macro_rules! template {
        ($language:literal: $($file:literal),+ $(,)?) => {
            &[$(($file, include_str!(concat!("../../../templates/", $language, "/", $file)))),+]
        };
    }
    match language {
        Language::Rust => {
            template!("rust": "Cargo.toml", "src/lib.rs", "pipeline.json", "README.md", ".gitignore")
        }
        Language::Go => {
            template!("go": "go.mod", "main.go", "main_test.go", "pipeline.json", "README.md")
        }
        Language::Python => {
            template!("python": "app.py", "test_app.py", "build.sh", "pipeline.json", "README.md", ".gitignore")
        }
        Language::JavaScript => {
            template!("js": "app.js", "counter.js", "counter.test.js", "package.json", "package-lock.json", "pipeline.json", "README.md", ".gitignore")
        }
    }
}

/// Where the SDKs are by default: beside the source tree this binary was
/// built from (this crate is `host/cli`).
pub fn default_sdk_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap_or(Path::new("."))
        .join("guest-sdk")
}

/// Creates the project `name` in `parent/name`.
///
/// # Errors
///
/// A bad name, an existing directory, a missing SDK (Rust and Go depend on
/// theirs by path), or a file that cannot be written.
pub fn create(
    parent: &Path,
    name: &str,
    language: Language,
    sdk_root: &Path,
) -> Result<PathBuf, NewError> {
    let mut chars = name.chars();
    let good = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !good || name.len() > 64 {
        return Err(NewError::BadName(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(NewError::Exists(dir));
    }
    let sdk = match language {
        Language::Rust => Some(sdk_root.join("rust")),
        Language::Go => Some(sdk_root.join("go")),
        Language::Python | Language::JavaScript => None,
    };
    if let Some(sdk) = &sdk {
        if !sdk.is_dir() {
            return Err(NewError::NoSdk {
                language: language.name(),
                path: sdk.clone(),
            });
        }
    }
    let sdk = sdk
        .map(|path| std::fs::canonicalize(&path).unwrap_or(path))
        .map(|path| path.display().to_string())
        .unwrap_or_default();
    let write = |relative: &str, contents: &str| -> Result<(), NewError> {
        let path = dir.join(relative);
        let io = |source| NewError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, contents).map_err(io)?;
        Ok(())
    };
    for (relative, contents) in files(language) {
        write(
            relative,
            &contents.replace("__NAME__", name).replace("__SDK__", &sdk),
        )?;
    }
    if matches!(language, Language::Python | Language::JavaScript) {
        // Their build tools read the world from a directory.
        write("wit/plumber.wit", WIT)?;
    }
    #[cfg(unix)]
    if language == Language::Python {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("build.sh");
        let _ = std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_placeholders_filled() {
        let parent = tempfile::tempdir().unwrap();
        for bad in ["", "Word", "1x", "a b", "../x"] {
            assert!(matches!(
                create(parent.path(), bad, Language::Rust, &default_sdk_root()),
                Err(NewError::BadName(_))
            ));
        }
        for language in [
            Language::Rust,
            Language::Go,
            Language::Python,
            Language::JavaScript,
        ] {
            let name = format!("wc-{}", language.name());
            let dir = create(parent.path(), &name, language, &default_sdk_root()).unwrap();
            assert_eq!(Language::detect(&dir).unwrap(), language);
            for (relative, _) in files(language) {
                let text = std::fs::read_to_string(dir.join(relative)).unwrap();
                assert!(
                    !text.contains("__NAME__") && !text.contains("__SDK__"),
                    "{relative}"
                );
            }
            assert!(matches!(
                create(parent.path(), &name, language, &default_sdk_root()),
                Err(NewError::Exists(_))
            ));
        }
        assert!(matches!(
            create(parent.path(), "x", Language::Go, Path::new("/nonexistent")),
            Err(NewError::NoSdk { .. })
        ));
    }
}
