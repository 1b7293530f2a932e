//! `cargo xtask tidy`: `cargo fmt --check`, `cargo clippy -D warnings`, and the rule that every
//! `.rs` file opens with a `//!` module comment. The header rule is also a `#[test]`, so
//! `cargo test --workspace` enforces it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Runs every tidy check, failing on the first that fails.
pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    cargo(&root, &["fmt", "--all", "--check"])?;
    cargo(
        &root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    let missing = files_without_module_doc(&root)?;
    if !missing.is_empty() {
        bail!(
            "these files do not open with a `//!` comment:\n{}",
            missing
                .iter()
                .map(|p| format!("  {}", p.display()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    println!("tidy: ok");
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Every tracked `.rs` file under the workspace (skipping `target/` and hidden directories) whose
/// first non-empty line is not a `//!` comment.
pub fn files_without_module_doc(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type()?.is_dir() {
                if name.starts_with('.') || name == "target" {
                    continue;
                }
                stack.push(path);
            } else if name.ends_with(".rs") {
                let text =
                    std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
                let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                if !first.trim_start().starts_with("//!") {
                    out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rust_file_opens_with_a_module_doc() {
        let missing = files_without_module_doc(&workspace_root()).unwrap();
        assert!(missing.is_empty(), "missing `//!` header: {missing:?}");
    }

    #[test]
    fn header_check_flags_a_file_without_a_doc() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("good.rs"), "//! Fine.\nfn main() {}\n").unwrap();
        std::fs::write(dir.join("bad.rs"), "fn main() {}\n").unwrap();
        let missing = files_without_module_doc(&dir).unwrap();
        assert_eq!(missing, vec![PathBuf::from("bad.rs")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
