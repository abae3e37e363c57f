//! The Markdown files of the repository hold together: every relative link
//! names a file or directory that exists, and every `#anchor` a heading of
//! its page (as GitHub makes anchors from headings); and the docs speak of
//! what changed, not of issue numbers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Directories never searched for Markdown files: build output,
/// dependencies, version control.
const SKIPPED_DIRS: [&str; 4] = ["target", "node_modules", ".git", "__pycache__"];

/// Every `.md` file under `dir`, outside the skipped directories.
fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_ref()) {
                markdown_files(&path, found);
            }
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

fn all_markdown() -> Vec<PathBuf> {
    let mut files = Vec::new();
    markdown_files(&plumber_tests::workspace_root(), &mut files);
    files.sort();
    assert!(files.len() > 5, "too few Markdown files found: {files:?}");
    files
}

/// The lines of a Markdown text outside fenced code blocks, with their
/// numbers and with inline code spans taken out.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut fenced = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut prose = String::new();
        for (part, piece) in line.split('`').enumerate() {
            if part % 2 == 0 {
                prose.push_str(piece);
            }
        }
        lines.push((index + 1, prose));
    }
    lines
}

/// The targets of the inline links and images of a line: `[text](target)`.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.to_owned());
        rest = &after[end..];
    }
    targets
}

/// The anchor GitHub gives a heading: its text without Markdown marks,
/// lower-cased, with everything but letters, digits, `_`, `-` and spaces
/// removed and spaces turned into hyphens.
fn slug(heading: &str) -> String {
    heading
        .replace('`', "")
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown page: its headings' slugs (a repeated one
/// numbered `-1`, `-2`, … as GitHub does).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim());
        let mut anchor = base.clone();
        let mut n = 0;
        while anchors.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        anchors.insert(anchor);
    }
    anchors
}

#[test]
fn every_relative_link_and_anchor_in_the_markdown_files_resolves() {
    let root = plumber_tests::workspace_root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in all_markdown() {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let dir = file.parent().unwrap_or(&root);
        for (number, line) in prose_lines(&text) {
            for target in link_targets(&line) {
                if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                    continue;
                }
                checked += 1;
                let (path, fragment) = match target.split_once('#') {
                    Some((path, fragment)) => (path, Some(fragment)),
                    None => (target.as_str(), None),
                };
                let linked = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                if !linked.exists() {
                    broken.push(format!("{shown}:{number}: `{target}`: no such file"));
                    continue;
                }
                let Some(fragment) = fragment else { continue };
                let is_markdown = linked.extension().is_some_and(|ext| ext == "md");
                if !is_markdown {
                    broken.push(format!(
                        "{shown}:{number}: `{target}`: an anchor into a file that is not Markdown"
                    ));
                    continue;
                }
                let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
                if !anchors(&linked_text).contains(fragment) {
                    broken.push(format!(
                        "{shown}:{number}: `{target}`: no heading with the anchor `#{fragment}`"
                    ));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} relative links found");
    assert!(
        broken.is_empty(),
        "{} broken links:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

/// Where `line` names an issue by number (`issue 12`, `issues #3`,
/// `Issue 8`).
fn issue_number(line: &str) -> bool {
    let lower = line.to_lowercase();
    lower.match_indices("issue").any(|(at, _)| {
        let rest = lower[at + "issue".len()..].trim_start_matches('s');
        let rest = rest.trim_start().trim_start_matches('#');
        rest.starts_with(|c: char| c.is_ascii_digit())
    })
}

#[test]
fn the_docs_name_no_issue_numbers() {
    let root = plumber_tests::workspace_root();
    let mut found = Vec::new();
    for file in all_markdown() {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (index, line) in text.lines().enumerate() {
            if issue_number(line) {
                found.push(format!("{shown}:{}: {line}", index + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "say what changed instead of naming issues:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_read_links_anchors_and_issue_numbers() {
    assert_eq!(
        link_targets("see [a](docs/a.md#x) and ![b](b.png \"t\")"),
        ["docs/a.md#x", "b.png"]
    );
    assert_eq!(
        slug("`pipeline[]` with `\"type\": \"wasm\"`"),
        "pipeline-with-type-wasm"
    );
    assert_eq!(slug("`pipeline[].on_error.retry`"), "pipelineon_errorretry");
    let page = anchors("# A\n## `(top level)`\n```\n# not a heading\n```\n### (top level)\n");
    assert_eq!(
        page,
        ["a", "top-level", "top-level-1"].map(str::to_owned).into()
    );
    assert!(issue_number("before and after issue 12 (items 2–3)"));
    assert!(issue_number("see Issues #4"));
    assert!(!issue_number("a known issue with sled's cache"));
}
