//! Neoscope's one artifact format: tensors in a safetensors file and a JSON header beside it
//! (format, version, base model name and SHA-256, then whatever the artifact adds). Words, tuned
//! lenses, activations, MFAs and injection runs are all saved and loaded here, so every artifact
//! is written atomically as one unit (each file by temporary file + rename; the pair committed by
//! its JSON, which names the tensors' SHA-256, see [`save`]) and every one is refused with the same message for another base model or a newer
//! version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{EngineError, Result};
pub use neoscope_api::files::{Header, write_atomic};
pub use neoscope_api::model::BaseModel;

/// One kind of artifact: its format name, the newest version this build writes and reads, and
/// what to call it in messages.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// Format name written into the header.
    pub format: &'static str,
    /// Current version.
    pub version: u32,
    /// Human name ("word file", "tuned lens", …).
    pub what: &'static str,
}

impl Kind {
    /// The header of a new artifact of this kind for `base`.
    pub fn header(&self, base: &BaseModel) -> Header {
        Header {
            format: self.format.into(),
            version: self.version,
            base_model: base.clone(),
        }
    }

    /// Refuses a header of another format, a newer version, or another base model.
    pub fn check(&self, path: &Path, h: &Header, base: &BaseModel) -> Result<()> {
        if h.format != self.format {
            return Err(EngineError::bad_file(
                path,
                format!(
                    "not a Neoscope {} (format `{}`, expected `{}`)",
                    self.what, h.format, self.format
                ),
            ));
        }
        if h.version > self.version {
            return Err(EngineError::bad_file(
                path,
                format!(
                    "{} version {} is newer than this Neoscope understands ({}); update Neoscope",
                    self.what, h.version, self.version
                ),
            ));
        }
        if h.base_model.sha256 != base.sha256 || h.base_model.d_model != base.d_model {
            return Err(EngineError::bad_file(
                path,
                format!(
                    "was made for the model {} (SHA-256 {}…), but the loaded model is {} \
                     (SHA-256 {}…); load {} first",
                    h.base_model.name,
                    short(&h.base_model.sha256),
                    base.name,
                    short(&base.sha256),
                    h.base_model.name
                ),
            ));
        }
        Ok(())
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The two files of an artifact named by `path` (tensors, JSON): the stem is kept as given.
pub use neoscope_api::files::artifact_paths as paths;

/// Refuses a tensor holding NaN or an infinity: such numbers are never written to a file nor
/// taken from one (they would poison every later computation silently).
fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Ok(());
    }
    let bad = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .position(|v| !v.is_finite());
    match bad {
        None => Ok(()),
        Some(i) => Err(EngineError::bad_file(
            path,
            format!("tensor `{name}` holds a non-finite number (NaN or infinity) at index {i}"),
        )),
    }
}

/// Tensors read from one safetensors file; lookups name the file, the tensor and the shape.
#[derive(Debug)]
pub struct Tensors {
    path: PathBuf,
    map: HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
}

impl Tensors {
    /// The names of the tensors held, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self.map.keys().map(String::as_str).collect();
        n.sort_unstable();
        n
    }

    /// The tensor `name`, which must have `shape` when one is given.
    pub fn get(&self, name: &str, shape: Option<&[usize]>) -> Result<Tensor> {
        let t = self
            .map
            .get(name)
            .ok_or_else(|| EngineError::bad_file(&self.path, format!("missing tensor `{name}`")))?;
        check_finite(&self.path, name, t)?;
        if let Some(shape) = shape
            && t.dims() != shape
        {
            return Err(EngineError::bad_file(
                &self.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t.clone())
    }

    /// Every tensor by name, taken out of the file (for checks of their own, e.g. that a
    /// set of names is complete and nothing else is there).
    pub fn into_map(self) -> HashMap<String, Tensor> {
        self.map
    }

    /// A string from the file's own metadata block.
    pub fn metadata(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| EngineError::bad_file(&self.path, format!("no `{key}` in its metadata")))
    }

    /// The file these came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The numbers N of the files `PREFIX` N `SUFFIX` in `dir` (checkpoints by step), ascending;
/// none when the folder does not exist.
pub fn numbered(dir: &Path, prefix: &str, suffix: &str) -> Vec<usize> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut n: Vec<usize> = rd
        .filter_map(std::result::Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse()
                .ok()
        })
        .collect();
    n.sort_unstable();
    n
}

/// Writes a safetensors file atomically (tensors are copied to the CPU first), with an optional
/// metadata block of strings. Returns the SHA-256 of the bytes written.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<String> {
    let cpu = tensors
        .iter()
        .map(|(k, v)| {
            let v = v.to_device(&Device::Cpu)?;
            check_finite(path, k, &v)?;
            Ok((k.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(k, v)| (k.clone(), v)), metadata)
        .map_err(|e| EngineError::bad_file(path, format!("serialising: {e}")))?;
    write_atomic(path, &bytes)?;
    Ok(sha256_hex(&bytes))
}

/// Feeds a tensor's values, as f32 little-endian bytes, to `h` (in chunks: one `update` per
/// value is millions of calls for an embedding matrix).
fn feed_f32(h: &mut sha2::Sha256, t: &Tensor) -> Result<()> {
    use sha2::Digest;
    let v: Vec<f32> = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let mut buf = Vec::with_capacity(4 * 4096);
    for chunk in v.chunks(4096) {
        buf.clear();
        chunk
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        h.update(&buf);
    }
    Ok(())
}

/// SHA-256 of a tensor's f32 bytes.
pub fn tensor_sha256(t: &Tensor) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    feed_f32(&mut h, t)?;
    Ok(hex::encode(h.finalize()))
}

/// The SHA-256 of named tensors' contents (names, shapes and f32 values in order), recorded in
/// a single-file checkpoint's metadata so a damaged file is refused, not trained on.
pub fn content_sha256(tensors: &[(&str, &Tensor)]) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, t) in tensors {
        h.update(name.as_bytes());
        for d in t.dims() {
            h.update((*d as u64).to_le_bytes());
        }
        feed_f32(&mut h, t)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Reads a safetensors file onto `device`.
pub fn read_tensors(path: &Path, device: &Device) -> Result<Tensors> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    parse_tensors(path, &bytes, device)
}

/// Reads safetensors `bytes` (from `path`, named in errors) onto `device`.
pub fn parse_tensors(path: &Path, bytes: &[u8], device: &Device) -> Result<Tensors> {
    let (_, md) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| EngineError::bad_file(path, e.to_string()))?;
    let metadata = md.metadata().clone().unwrap_or_default();
    let map = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| EngineError::bad_file(path, e.to_string()))?;
    Ok(Tensors {
        path: path.to_path_buf(),
        map,
        metadata,
    })
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value)
        .map_err(|e| EngineError::bad_file(path, format!("serialising: {e}")))?;
    Ok(write_atomic(path, &text)?)
}

/// Reads an artifact's JSON: its header first (refused for another format, a newer version or
/// another base model), then the whole of it (errors name line and column).
pub fn read_json<M: DeserializeOwned>(path: &Path, kind: &Kind, base: &BaseModel) -> Result<M> {
    let text = neoscope_api::files::read_text(path)?;
    let header: Header =
        serde_json::from_str(&text).map_err(|e| EngineError::bad_file(path, e.to_string()))?;
    kind.check(path, &header, base)?;
    serde_json::from_str(&text).map_err(|e| EngineError::bad_file(path, e.to_string()))
}

/// The key in an artifact's JSON that holds the SHA-256 of its safetensors file: the pair is
/// one unit, so a JSON beside tensors from another save is refused instead of loaded.
const TENSORS_SHA256: &str = "tensors_sha256";

/// Where a save puts the new tensors until its JSON is in place: `PATH.safetensors.pending`.
fn pending(st: &Path) -> PathBuf {
    let mut s = st.as_os_str().to_owned();
    s.push(".pending");
    PathBuf::from(s)
}

/// Saves an artifact as one unit, although it is two files. The new tensors are written beside
/// the old ones (`PATH.safetensors.pending`), then the JSON naming their SHA-256 replaces the old
/// JSON (the commit), then the tensors are renamed into place. Killed before the commit, the
/// old pair is intact (the pending file is ignored and later replaced); killed after it,
/// [`load`] finds the tensors the JSON names in the pending file and finishes the rename. Each
/// write is itself atomic, so every file is an old or a new version, never a mix.
/// Returns the JSON's path.
pub fn save<M: Serialize>(path: &Path, tensors: &[(String, Tensor)], meta: &M) -> Result<PathBuf> {
    let (st, json) = paths(path);
    let mut value = serde_json::to_value(meta)
        .map_err(|e| EngineError::bad_file(&json, format!("serialising: {e}")))?;
    let next = pending(&st);
    let sha = write_tensors(&next, tensors, None)?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert(TENSORS_SHA256.into(), sha.into());
    }
    write_json(&json, &value)?;
    std::fs::rename(&next, &st).map_err(|e| EngineError::io(&st, e))?;
    Ok(json)
}

/// Loads an artifact saved by [`save`]: checks the header and that the tensors are the ones
/// the JSON was written with (finishing a save that was stopped after its commit), then reads
/// the tensors onto `device`.
pub fn load<M: DeserializeOwned>(
    path: &Path,
    kind: &Kind,
    base: &BaseModel,
    device: &Device,
) -> Result<(M, Tensors)> {
    let (st, json) = paths(path);
    let value: serde_json::Value = read_json(&json, kind, base)?;
    let want = value
        .get(TENSORS_SHA256)
        .and_then(serde_json::Value::as_str);
    let mut bytes = std::fs::read(&st);
    if let Some(want) = want
        && !bytes.as_ref().is_ok_and(|b| sha256_hex(b) == want)
    {
        // A save stopped between its commit and its last rename: the JSON's tensors are the
        // pending ones. Finish the save (best effort: a read-only folder still loads).
        let next = pending(&st);
        if let Ok(b) = std::fs::read(&next)
            && sha256_hex(&b) == want
        {
            let _ = std::fs::rename(&next, &st);
            bytes = Ok(b);
        }
    }
    let bytes = bytes.map_err(|e| EngineError::io(&st, e))?;
    if let Some(want) = want {
        let got = sha256_hex(&bytes);
        if got != want {
            return Err(EngineError::bad_file(
                &json,
                format!(
                    "belongs to another save than {} (SHA-256 {}… instead of {}…): the two \
                     files were replaced separately; save it again",
                    st.display(),
                    short(&got),
                    short(want)
                ),
            ));
        }
    }
    let meta =
        serde_json::from_value(value).map_err(|e| EngineError::bad_file(&json, e.to_string()))?;
    Ok((meta, parse_tensors(&st, &bytes, device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: Kind = Kind {
        format: "neoscope-test",
        version: 2,
        what: "test file",
    };

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Meta {
        #[serde(flatten)]
        header: Header,
        note: String,
    }

    fn base(name: &str, sha: &str) -> BaseModel {
        BaseModel {
            name: name.into(),
            sha256: sha.into(),
            d_model: 4,
            d_vocab: 10,
        }
    }

    #[test]
    fn round_trip_and_the_three_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let b = base("m", "aaaaaaaaaaaaaaaa");
        let meta = Meta {
            header: KIND.header(&b),
            note: "hi".into(),
        };
        let t = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let json = save(&path, &[("x".into(), t)], &meta).unwrap();
        let text = std::fs::read_to_string(&json).unwrap();
        assert!(text.contains("\"format\": \"neoscope-test\""), "{text}");
        let (back, tensors): (Meta, _) = load(&path, &KIND, &b, &Device::Cpu).unwrap();
        assert_eq!(back, meta);
        assert_eq!(tensors.get("x", Some(&[2, 3])).unwrap().dims(), &[2, 3]);
        let e = tensors.get("x", Some(&[3, 2])).unwrap_err().to_string();
        assert!(e.contains("`x` has shape [2, 3], expected [3, 2]"), "{e}");
        let e = tensors.get("y", None).unwrap_err().to_string();
        assert!(e.contains("a.safetensors: missing tensor `y`"), "{e}");

        let other = base("other", "bbbbbbbbbbbbbbbbbb");
        let e = load::<Meta>(&path, &KIND, &other, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("was made for the model m"), "{e}");
        assert!(e.contains("the loaded model is other"), "{e}");

        let old = Kind { version: 1, ..KIND };
        let e = load::<Meta>(&path, &old, &b, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2 is newer"), "{e}");

        let wrong = Kind {
            format: "neoscope-else",
            ..KIND
        };
        let e = load::<Meta>(&path, &wrong, &b, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a Neoscope test file"), "{e}");
    }

    #[test]
    fn the_stem_is_kept_and_non_finite_numbers_are_neither_written_nor_read() {
        let dir = tempfile::tempdir().unwrap();
        let b = base("m", "aaaaaaaaaaaaaaaa");
        let meta = Meta {
            header: KIND.header(&b),
            note: "v2".into(),
        };
        let t = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        // `base.v2` is a name, not an extension to replace: `base` stays untouched.
        let json = save(
            &dir.path().join("base.v2"),
            &[("x".into(), t.clone())],
            &meta,
        )
        .unwrap();
        assert!(json.ends_with("base.v2.json"), "{}", json.display());
        assert!(dir.path().join("base.v2.safetensors").exists());
        assert!(!dir.path().join("base.json").exists());
        let (back, _): (Meta, _) =
            load(&dir.path().join("base.v2.json"), &KIND, &b, &Device::Cpu).unwrap();
        assert_eq!(back.note, "v2");

        let nan = Tensor::new(&[1f32, f32::NAN, 2.0], &Device::Cpu).unwrap();
        let e = save(&dir.path().join("bad"), &[("v".into(), nan.clone())], &meta)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`v`") && e.contains("non-finite") && e.contains("index 1"),
            "{e}"
        );
        assert!(!dir.path().join("bad.safetensors").exists());
        // A file written by someone else with an infinity is refused when read.
        let st = dir.path().join("inf.safetensors");
        let inf = Tensor::new(&[f32::INFINITY], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_owned(), inf)]), &st).unwrap();
        let e = read_tensors(&st, &Device::Cpu)
            .unwrap()
            .get("w", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-finite"), "{e}");
    }

    #[test]
    fn a_save_stopped_at_either_step_leaves_old_or_new_and_a_mixed_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let b = base("m", "aaaaaaaaaaaaaaaa");
        let meta = Meta {
            header: KIND.header(&b),
            note: "first".into(),
        };
        let one = Tensor::ones(2, candle_core::DType::F32, &Device::Cpu).unwrap();
        let path = dir.path().join("w");
        let (st, json) = paths(&path);
        let x = |path: &Path| -> Vec<f32> {
            let (_, t) = load::<Meta>(path, &KIND, &b, &Device::Cpu).unwrap();
            t.get("x", None).unwrap().to_vec1().unwrap()
        };
        save(&path, &[("x".into(), one.clone())], &meta).unwrap();
        let (old_st, old_json) = (std::fs::read(&st).unwrap(), std::fs::read(&json).unwrap());
        save(&path, &[("x".into(), (&one * 2.0).unwrap())], &meta).unwrap();
        let (new_st, new_json) = (std::fs::read(&st).unwrap(), std::fs::read(&json).unwrap());
        // Stopped before the commit: new tensors pending, the old pair in place -> the old.
        std::fs::write(pending(&st), &new_st).unwrap();
        std::fs::write(&st, &old_st).unwrap();
        std::fs::write(&json, &old_json).unwrap();
        assert_eq!(x(&path), [1.0, 1.0]);
        // Stopped after the commit: the new JSON, its tensors still pending -> the new, and
        // the save is finished.
        std::fs::write(&json, &new_json).unwrap();
        assert_eq!(x(&path), [2.0, 2.0]);
        assert!(!pending(&st).exists());
        assert_eq!(std::fs::read(&st).unwrap(), new_st);
        // Tensors replaced without their JSON (no pending save to finish): refused.
        std::fs::write(&json, &old_json).unwrap();
        let e = load::<Meta>(&path, &KIND, &b, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another save"), "{e}");
    }

    #[test]
    fn a_malformed_json_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("b.json");
        std::fs::write(&json, "{\n \"format\": \"neoscope-test\",\n oops\n}").unwrap();
        let e = read_json::<Meta>(&json, &KIND, &base("m", "a"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.json") && e.contains("line 3"), "{e}");
    }
}
