//! Reading a folder of documents: .txt, .md and .pdf; everything else is
//! listed as skipped with the reason.

use std::path::{Path, PathBuf};

/// A readable document.
#[derive(Clone, Debug)]
pub struct Document {
    /// Path relative to the input folder (the document's name in outputs).
    pub name: String,
    pub path: PathBuf,
    pub text: String,
    /// Stable content hash: a changed document makes new tasks.
    pub hash: String,
}

/// A file that was not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

fn hash(text: &str) -> String {
    format!("{:016x}", crate::sim::text::stable_hash(text))
}

/// Read every file directly in `dir` (sorted by name).
pub fn read_dir(dir: &Path) -> anyhow::Result<(Vec<Document>, Vec<Skipped>)> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        anyhow::anyhow!("cannot read the input folder {}: {e}\n  fix: pass an existing folder of .txt, .md or .pdf files with --input", dir.display())
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let (mut docs, mut skipped) = (Vec::new(), Vec::new());
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            skipped.push(Skipped {
                name,
                reason: "a folder (only files directly inside --input are read)".into(),
            });
            continue;
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let text = match ext.as_str() {
            "txt" | "md" => std::fs::read(&path)
                .map_err(|e| format!("unreadable: {e}"))
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            "pdf" => pdf_extract::extract_text(&path)
                .map_err(|e| format!("no text could be extracted from the PDF: {e}")),
            _ => Err(format!("unsupported type `.{ext}` (use .txt, .md or .pdf)")),
        };
        match text {
            Ok(t) if t.trim().is_empty() => skipped.push(Skipped {
                name,
                reason: "empty (no text)".into(),
            }),
            Ok(t) => docs.push(Document {
                hash: hash(&t),
                name,
                path,
                text: t,
            }),
            Err(reason) => skipped.push(Skipped { name, reason }),
        }
    }
    Ok((docs, skipped))
}

/// How documents longer than the limit are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongDocs {
    /// Keep the first `max_chars` characters.
    Truncate,
    /// Process each `max_chars` piece as its own task.
    Split,
}

/// The parts of a document to send, by the stated rule.
pub fn parts(text: &str, max_chars: usize, rule: LongDocs) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max_chars || max_chars == 0 {
        return vec![text.to_string()];
    }
    match rule {
        LongDocs::Truncate => vec![chars[..max_chars].iter().collect()],
        LongDocs::Split => chars
            .chunks(max_chars)
            .map(|c| c.iter().collect())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_documents_follow_the_rule() {
        assert_eq!(parts("abcdef", 10, LongDocs::Truncate), ["abcdef"]);
        assert_eq!(parts("abcdef", 4, LongDocs::Truncate), ["abcd"]);
        assert_eq!(parts("abcdef", 4, LongDocs::Split), ["abcd", "ef"]);
    }
}
