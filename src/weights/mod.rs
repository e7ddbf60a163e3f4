//! Weight files as people have them: safetensors, and PyTorch's `torch.save` state dicts in both
//! of its formats — the zip archive (PyTorch ≥ 1.6) and the **legacy** format (before 1.6, the
//! format of most published de-raining and CycleGAN checkpoints): a sequence of pickles (magic
//! number, protocol, system info, the object, the storage keys) followed by the raw storages.
//!
//! The format is read off the content, never the file name. Pickles go through the restricted
//! unpickler in [`pickle`]: loading weights never runs code. The state dict may be wrapped
//! (`params_ema`/`params` as BasicSR saves, `state_dict`, `model`, `net`, `netG`) and its names
//! may carry `nn.DataParallel`'s `module.` prefix; both are undone. Floating-point tensors of
//! any width (f16, bf16, f32, f64) come out as f32, integer ones as i64, bool and byte as u8;
//! strides and storage offsets (views, shared storages) are honoured.
//!
//! Nothing is allocated on a size the file claims before the bytes are known to be there.
//!
//! This module knows no architecture: which model a file holds is [`crate::registry`]'s job.

mod params;
pub mod pickle;

pub use params::{device, Params};

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use pickle::{Id, Machine, PickleError, StorageRef, TensorRef, Value};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Format { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Pickle { path: PathBuf, source: PickleError },
    /// A tensor a model needs is missing, mis-shaped or unexpected.
    #[error("{}: tensor `{name}`: {why}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        why: String,
    },
    /// A `--device` the user named that does not exist here.
    #[error("{0}")]
    Device(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl crate::usage::IsUsage for WeightsError {
    fn is_usage(&self) -> bool {
        matches!(self, WeightsError::Device(_))
    }
}

pub type Result<T> = std::result::Result<T, WeightsError>;

/// The first pickle of a legacy file: `0x1950a86a20f9469cfc6c`, little-endian.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The second: the legacy format's protocol version.
const LEGACY_PROTOCOL: i64 = 1001;
/// Keys under which checkpoints wrap their state dict, in order of preference (BasicSR keeps
/// both `params_ema` and `params`; the EMA weights are the ones its authors evaluate).
pub const WRAPPERS: [&str; 6] = ["params_ema", "params", "state_dict", "model", "net", "netG"];
/// Prefix `nn.DataParallel` puts on every name.
const PARALLEL_PREFIX: &str = "module.";
/// Elements of one tensor that no storage backs one to one (stride-0 expansions) are capped here.
const MAX_EXPANDED: u64 = 1 << 24;

/// How the file was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Safetensors,
    /// `torch.save` since PyTorch 1.6: a zip archive with `data.pkl` and `data/KEY` storages.
    PytorchZip,
    /// `torch.save` before PyTorch 1.6 (or `_use_new_zipfile_serialization=False`).
    PytorchLegacy,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::PytorchZip => "pytorch-zip",
            Format::PytorchLegacy => "pytorch-legacy",
        }
    }
}

/// One tensor as read, with the dtype it had in the file.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    /// The file's dtype (`float16`, `float32`, …).
    pub source_dtype: String,
    pub tensor: Tensor,
}

/// A weight file's content.
#[derive(Clone, Debug)]
pub struct WeightFile {
    pub format: Format,
    /// The wrapper key the state dict was found under, if any.
    pub wrapper: Option<String>,
    /// Whether the `module.` prefix was removed.
    pub prefix_stripped: bool,
    /// Top-level keys of the pickled object (empty for safetensors).
    pub top_level_keys: Vec<String>,
    /// Tensors sorted by name.
    pub entries: Vec<Entry>,
}

impl WeightFile {
    /// The tensors by name.
    pub fn into_map(self) -> HashMap<String, Tensor> {
        self.entries
            .into_iter()
            .map(|e| (e.name, e.tensor))
            .collect()
    }
}

/// Reads a weight file into tensors by name (see the module docs for what is accepted).
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(read(path)?.into_map())
}

/// Reads a weight file, keeping what [`inspect`](crate::registry) reports.
pub fn read(path: &Path) -> Result<WeightFile> {
    let bad = |why: String| WeightsError::Format {
        path: path.to_path_buf(),
        why,
    };
    if !path.is_file() {
        return Err(bad("no such weight file".into()));
    }
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    // safetensors are memory-mapped by candle rather than read into a buffer and copied.
    let mut head = [0u8; 9];
    let len = std::fs::metadata(path).map_err(io)?.len();
    let n =
        std::io::Read::read(&mut std::fs::File::open(path).map_err(io)?, &mut head).map_err(io)?;
    if n == head.len() && header_says_safetensors(&head, len) {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
        return checked(safetensors_file(tensors), path);
    }
    let bytes = std::fs::read(path).map_err(io)?;
    read_bytes(&bytes, path)
}

/// [`read`] of bytes already in memory (`path` names them in errors).
pub fn read_bytes(bytes: &[u8], path: &Path) -> Result<WeightFile> {
    let pickle_err = |source| WeightsError::Pickle {
        path: path.to_path_buf(),
        source,
    };
    let bad = |why: String| WeightsError::Format {
        path: path.to_path_buf(),
        why,
    };
    let file = if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes, path)?
    } else if bytes.len() >= 2 && bytes[0] == 0x80 && bytes[1] <= 5 {
        read_legacy(bytes, path).map_err(|e| match e {
            Loaded::Pickle(p) => pickle_err(p),
            Loaded::Other(e) => e,
        })?
    } else if bytes.len() >= 9 && header_says_safetensors(bytes, bytes.len() as u64) {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
        safetensors_file(tensors)
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        return Err(bad(
            "a tar archive (PyTorch's format before 0.1.10), which raincheck does not read; \
             re-save it with a current torch.save"
                .into(),
        ));
    } else {
        return Err(bad(format!(
            "not a weight file: neither safetensors nor a PyTorch checkpoint (zip or legacy); \
             it starts with {:02x?}",
            &bytes[..bytes.len().min(8)]
        )));
    };
    checked(file, path)
}

/// Sorts the tensors by name and refuses an empty file or a name given twice.
fn checked(mut file: WeightFile, path: &Path) -> Result<WeightFile> {
    let bad = |why: String| WeightsError::Format {
        path: path.to_path_buf(),
        why,
    };
    if file.entries.is_empty() {
        return Err(bad("holds no tensors".into()));
    }
    file.entries.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = file.entries.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(bad(format!(
            "tensor `{}` appears twice (once with the `module.` prefix?)",
            w[0].name
        )));
    }
    Ok(file)
}

/// A safetensors file starts with its header's length (within the file) and the header's `{`.
fn header_says_safetensors(head: &[u8], file_len: u64) -> bool {
    let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    n <= file_len - 8 && head[8] == b'{'
}

fn safetensors_file(tensors: HashMap<String, Tensor>) -> WeightFile {
    let entries = tensors
        .into_iter()
        .map(|(name, tensor)| Entry {
            name,
            source_dtype: dtype_name(tensor.dtype()).into(),
            tensor,
        })
        .collect();
    WeightFile {
        format: Format::Safetensors,
        wrapper: None,
        prefix_stripped: false,
        top_level_keys: Vec::new(),
        entries,
    }
}

/// PyTorch's name for a candle dtype.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I64 => "int64",
        DType::U32 => "uint32",
        DType::U8 => "uint8",
        _ => "other",
    }
}

/// Element type of a storage type, as (PyTorch name, bytes per element).
fn storage_dtype(kind: &str) -> Option<(&'static str, usize)> {
    Some(match kind {
        "FloatStorage" => ("float32", 4),
        "DoubleStorage" => ("float64", 8),
        "HalfStorage" => ("float16", 2),
        "BFloat16Storage" => ("bfloat16", 2),
        "LongStorage" => ("int64", 8),
        "IntStorage" => ("int32", 4),
        "ShortStorage" => ("int16", 2),
        "CharStorage" => ("int8", 1),
        "ByteStorage" => ("uint8", 1),
        "BoolStorage" => ("bool", 1),
        _ => return None,
    })
}

enum Loaded {
    Pickle(PickleError),
    Other(WeightsError),
}

impl From<PickleError> for Loaded {
    fn from(e: PickleError) -> Self {
        Loaded::Pickle(e)
    }
}

impl From<WeightsError> for Loaded {
    fn from(e: WeightsError) -> Self {
        Loaded::Other(e)
    }
}

/// The legacy format: five pickles, then each storage as `u64` element count + raw bytes, in the
/// order of the key list.
fn read_legacy(bytes: &[u8], path: &Path) -> std::result::Result<WeightFile, Loaded> {
    let bad = |why: String| {
        Loaded::Other(WeightsError::Format {
            path: path.to_path_buf(),
            why,
        })
    };
    let mut m = Machine::new(bytes);
    let magic = m.load()?;
    if m.values[magic] != Value::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err(bad(
            "a pickle, but not a PyTorch checkpoint (no legacy magic number)".into(),
        ));
    }
    let proto = m.load()?;
    if m.values[proto] != Value::Int(LEGACY_PROTOCOL) {
        return Err(bad(format!(
            "legacy PyTorch checkpoint of protocol {:?} (raincheck reads {LEGACY_PROTOCOL})",
            m.values[proto]
        )));
    }
    let sys_info = m.load()?;
    if let Some(d) = m.dict(sys_info) {
        let little = d
            .iter()
            .find(|(k, _)| m.str(*k) == Some("little_endian"))
            .map(|(_, v)| m.values[*v].clone());
        if little == Some(Value::Bool(false)) {
            return Err(bad("saved on a big-endian machine".into()));
        }
    }
    let root = m.load()?;
    let keys_id = m.load()?;
    let keys: Vec<String> = m
        .items(keys_id)
        .and_then(|ks| ks.iter().map(|&k| m.str(k).map(str::to_string)).collect())
        .ok_or_else(|| bad("the storage key list is not a list of strings".into()))?;
    // The element size of each storage comes from its references in the object.
    let kinds: HashMap<&str, &str> = m
        .values
        .iter()
        .filter_map(|v| match v {
            Value::Storage(s) => Some((s.key.as_str(), s.kind.as_str())),
            _ => None,
        })
        .collect();
    let mut storages = HashMap::new();
    let mut pos = m.position();
    for key in &keys {
        let kind = kinds
            .get(key.as_str())
            .ok_or_else(|| bad(format!("storage `{key}` is listed but never used")))?;
        let (_, size) = storage_dtype(kind).ok_or_else(|| bad(format!("storage type {kind}")))?;
        let truncated = |pos: usize| {
            bad(format!(
                "truncated: storage `{key}` at offset {pos} runs past the end of the file ({} bytes)",
                bytes.len()
            ))
        };
        let count = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| truncated(pos))
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))?;
        let len = count
            .checked_mul(size as u64)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= bytes.len() - pos - 8)
            .ok_or_else(|| truncated(pos))?;
        storages.insert(key.clone(), &bytes[pos + 8..pos + 8 + len]);
        pos += 8 + len;
    }
    let (wrapper, top_level_keys, tensors) = state_dict(&m, root, path)?;
    let entries = materialise(tensors, |s| storages.get(&s.key).copied(), path)?;
    Ok(WeightFile {
        format: Format::PytorchLegacy,
        wrapper,
        prefix_stripped: false,
        top_level_keys,
        entries,
    }
    .strip_prefix())
}

/// The zip format: `ARCHIVE/data.pkl` and one stored entry `ARCHIVE/data/KEY` per storage.
fn read_zip(bytes: &[u8], path: &Path) -> Result<WeightFile> {
    let bad = |why: String| WeightsError::Format {
        path: path.to_path_buf(),
        why,
    };
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("not a readable PyTorch checkpoint (zip): {e}")))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("unreadable zip directory: {e}")))?;
    let pkl = names
        .iter()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .min()
        .ok_or_else(|| bad("a zip archive without data.pkl: not a PyTorch checkpoint".into()))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if names.contains(&format!("{prefix}constants.pkl")) {
        return Err(bad(
            "a TorchScript archive (torch.jit.save), not a state dict; in Python, load it and \
             save its state_dict() with torch.save"
                .into(),
        ));
    }
    let mut entry = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| bad(format!("entry `{name}`: {e}")))?;
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(bad(format!(
                "entry `{name}` is compressed ({:?}); torch.save stores entries uncompressed",
                f.compression()
            )));
        }
        let size = f.size();
        if size > bytes.len() as u64 {
            return Err(bad(format!("entry `{name}` claims {size} bytes")));
        }
        let mut out = Vec::with_capacity(size as usize);
        f.read_to_end(&mut out)
            .map_err(|e| bad(format!("entry `{name}`: {e}")))?;
        Ok(out)
    };
    // Newer PyTorch records the byte order; archives without the record are little-endian.
    if names.contains(&format!("{prefix}byteorder")) {
        let order = entry(&format!("{prefix}byteorder"))?;
        if order != b"little" {
            return Err(bad(format!(
                "byte order `{}`: raincheck reads little-endian checkpoints",
                String::from_utf8_lossy(&order)
            )));
        }
    }
    let data = entry(pkl)?;
    let mut m = Machine::new(&data);
    let root = m.load().map_err(|source| WeightsError::Pickle {
        path: path.to_path_buf(),
        source,
    })?;
    let (wrapper, top_level_keys, tensors) = state_dict(&m, root, path)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for t in &tensors {
        let key = &t.1.storage.key;
        if !storages.contains_key(key) {
            let bytes = entry(&format!("{prefix}data/{key}"))?;
            storages.insert(key.clone(), bytes);
        }
    }
    let entries = materialise(tensors, |s| storages.get(&s.key).map(Vec::as_slice), path)?;
    Ok(WeightFile {
        format: Format::PytorchZip,
        wrapper,
        prefix_stripped: false,
        top_level_keys,
        entries,
    }
    .strip_prefix())
}

impl WeightFile {
    /// Drops `nn.DataParallel`'s `module.` prefix (from every name that has it).
    fn strip_prefix(mut self) -> Self {
        for e in &mut self.entries {
            if let Some(rest) = e.name.strip_prefix(PARALLEL_PREFIX) {
                e.name = rest.to_string();
                self.prefix_stripped = true;
            }
        }
        self
    }
}

type Found = (Option<String>, Vec<String>, Vec<(String, TensorRef)>);

/// Finds the state dict in the unpickled object: the object itself when it is a dict of tensors,
/// or the first of [`WRAPPERS`] that holds one.
fn state_dict(m: &Machine, root: Id, path: &Path) -> Result<Found> {
    let bad = |why: String| WeightsError::Format {
        path: path.to_path_buf(),
        why,
    };
    let Some(top) = m.dict(root) else {
        return Err(bad(format!(
            "the checkpoint holds a {}, not a state dict",
            kind_name(&m.values[root])
        )));
    };
    let keys: Vec<String> = top
        .iter()
        .map(|(k, _)| {
            m.str(*k)
                .map_or_else(|| "<non-string>".into(), str::to_string)
        })
        .collect();
    if let Some(t) = tensor_dict(m, root) {
        return Ok((None, keys, t));
    }
    for w in WRAPPERS {
        if let Some(&(_, v)) = top.iter().rev().find(|(k, _)| m.str(*k) == Some(w)) {
            if let Some(t) = tensor_dict(m, v) {
                return Ok((Some(w.to_string()), keys, t));
            }
        }
    }
    let mut shown = keys.clone();
    shown.truncate(20);
    Err(bad(format!(
        "no state dict found: the top-level keys are [{}]{}; raincheck looks for a dict of \
         tensors at the top or under one of {}",
        shown.join(", "),
        if keys.len() > 20 { ", …" } else { "" },
        WRAPPERS.join(", ")
    )))
}

/// A non-empty dict whose values are all tensors, as (name, tensor) pairs (the last value of a
/// repeated key wins, as in Python).
fn tensor_dict(m: &Machine, id: Id) -> Option<Vec<(String, TensorRef)>> {
    let d = m.dict(id)?;
    if d.is_empty() {
        return None;
    }
    let mut out: BTreeMap<String, TensorRef> = BTreeMap::new();
    for &(k, v) in d {
        let Value::Tensor(t) = &m.values[v] else {
            return None;
        };
        out.insert(m.str(k)?.to_string(), t.clone());
    }
    Some(out.into_iter().collect())
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Tuple(_) => "tuple",
        Value::Dict(_) => "dict",
        Value::Set(_) => "set",
        Value::Global(_) => "class",
        Value::Storage(_) => "storage",
        Value::Tensor(_) => "single tensor",
    }
}

/// Builds candle tensors from tensor references and the storages' bytes.
fn materialise<'s>(
    tensors: Vec<(String, TensorRef)>,
    storage: impl Fn(&StorageRef) -> Option<&'s [u8]>,
    path: &Path,
) -> Result<Vec<Entry>> {
    tensors
        .into_iter()
        .map(|(name, t)| {
            let bad = |why: String| WeightsError::Format {
                path: path.to_path_buf(),
                why: format!("tensor `{name}`: {why}"),
            };
            let (dtype, size) = storage_dtype(&t.storage.kind)
                .ok_or_else(|| bad(format!("storage type {}", t.storage.kind)))?;
            let bytes = storage(&t.storage)
                .ok_or_else(|| bad(format!("storage `{}` is missing", t.storage.key)))?;
            let (view_offset, view_len) = t.storage.view.unwrap_or((0, t.storage.numel));
            let stored = (bytes.len() / size) as u64;
            if view_offset
                .checked_add(view_len)
                .is_none_or(|end| end > stored)
                || t.storage.view.is_none() && t.storage.numel > stored
            {
                return Err(bad(format!(
                    "storage `{}` holds {stored} elements, the file says {}",
                    t.storage.key, t.storage.numel
                )));
            }
            let elems =
                &bytes[view_offset as usize * size..(view_offset + view_len) as usize * size];
            let tensor = gather(elems, size, dtype, &t).map_err(bad)?;
            Ok(Entry {
                name,
                source_dtype: dtype.into(),
                tensor,
            })
        })
        .collect()
}

/// The elements of `t` (offset, size, stride into `elems`) as a contiguous candle tensor.
fn gather(
    elems: &[u8],
    size: usize,
    dtype: &str,
    t: &TensorRef,
) -> std::result::Result<Tensor, String> {
    let available = (elems.len() / size) as u64;
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or("its size overflows")?;
    let dims: Vec<usize> = t.size.iter().map(|&d| d as usize).collect();
    if numel > 0 {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&d, &s)| {
                a.checked_add((d - 1).checked_mul(s)?)
            });
        if last.is_none_or(|l| l >= available) {
            return Err(format!(
                "size {:?}, stride {:?} and offset {} reach past its storage of {available} elements",
                t.size, t.stride, t.offset
            ));
        }
        if numel > available && numel > MAX_EXPANDED {
            return Err(format!("{numel} elements from a storage of {available}"));
        }
    }
    let index = Walk {
        size: &t.size,
        stride: &t.stride,
        idx: vec![0; dims.len()],
        at: t.offset,
        left: numel,
    };
    let at = |i: usize| &elems[i * size..(i + 1) * size];
    let shape = dims.as_slice();
    let made = match dtype {
        "float32" => Tensor::from_vec(
            index
                .map(|i| f32::from_le_bytes(at(i).try_into().expect("4")))
                .collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        ),
        "float64" => Tensor::from_vec(
            index
                .map(|i| f64::from_le_bytes(at(i).try_into().expect("8")) as f32)
                .collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        ),
        "float16" => Tensor::from_vec(
            index
                .map(|i| half::f16::from_le_bytes(at(i).try_into().expect("2")).to_f32())
                .collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        ),
        "bfloat16" => Tensor::from_vec(
            index
                .map(|i| half::bf16::from_le_bytes(at(i).try_into().expect("2")).to_f32())
                .collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        ),
        "uint8" | "bool" => Tensor::from_vec(
            index.map(|i| elems[i]).collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        ),
        _ => {
            let int = |b: &[u8]| -> i64 {
                match b.len() {
                    8 => i64::from_le_bytes(b.try_into().expect("8")),
                    4 => i32::from_le_bytes(b.try_into().expect("4")) as i64,
                    2 => i16::from_le_bytes(b.try_into().expect("2")) as i64,
                    _ => b[0] as i8 as i64,
                }
            };
            Tensor::from_vec(
                index.map(|i| int(at(i))).collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            )
        }
    };
    made.map_err(|e| e.to_string())
}

/// The storage positions of a strided tensor's elements, in row-major order (no index is
/// materialised: a contiguous tensor walks its storage in order).
#[derive(Clone)]
struct Walk<'a> {
    size: &'a [u64],
    stride: &'a [u64],
    idx: Vec<u64>,
    at: u64,
    left: u64,
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let here = self.at as usize;
        for d in (0..self.idx.len()).rev() {
            self.idx[d] += 1;
            self.at += self.stride[d];
            if self.idx[d] < self.size[d] {
                break;
            }
            self.at -= self.stride[d] * self.size[d];
            self.idx[d] = 0;
        }
        Some(here)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Walk<'_> {}

/// Writes tensors as safetensors under a temporary name, then renames (no half-written file is
/// ever left under `path`).
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = crate::image_io::temp_path_for(path);
    let written = candle_core::safetensors::save(tensors, &tmp)
        .map_err(|e| WeightsError::Format {
            path: path.to_path_buf(),
            why: format!("cannot write: {e}"),
        })
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|source| WeightsError::Io {
                path: path.to_path_buf(),
                source,
            })
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tref(offset: u64, size: &[u64], stride: &[u64]) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                kind: "FloatStorage".into(),
                key: "0".into(),
                location: "cpu".into(),
                numel: 12,
                view: None,
            },
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn floats(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    /// A transposed view and an offset slice read the right elements.
    #[test]
    fn strides_and_offsets() {
        let s = floats(12);
        // (3, 4) row-major, transposed to (4, 3): stride (1, 4).
        let t = gather(&s, 4, "float32", &tref(0, &[4, 3], &[1, 4])).unwrap();
        let v: Vec<Vec<f32>> = t.to_vec2().unwrap();
        assert_eq!(v[0], [0.0, 4.0, 8.0]);
        assert_eq!(v[3], [3.0, 7.0, 11.0]);
        // Row 1 of the (3, 4) matrix.
        let t = gather(&s, 4, "float32", &tref(4, &[4], &[1])).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [4.0, 5.0, 6.0, 7.0]);
        // Scalars and empty tensors.
        let t = gather(&s, 4, "float32", &tref(11, &[], &[])).unwrap();
        assert_eq!(t.to_scalar::<f32>().unwrap(), 11.0);
        let t = gather(&s, 4, "float32", &tref(0, &[0, 5], &[5, 1])).unwrap();
        assert_eq!(t.dims(), [0, 5]);
    }

    /// A tensor reaching past its storage, or claiming astronomically many elements, is refused
    /// before anything is allocated for it.
    #[test]
    fn out_of_range_tensors_are_refused() {
        let s = floats(12);
        assert!(gather(&s, 4, "float32", &tref(1, &[3, 4], &[4, 1])).is_err());
        assert!(gather(&s, 4, "float32", &tref(0, &[1 << 40, 1 << 40], &[0, 0])).is_err());
        assert!(gather(&s, 4, "float32", &tref(0, &[u64::MAX, 2], &[1, 1])).is_err());
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let p = Path::new("junk.pth");
        for bytes in [
            &b""[..],
            b"hello world",
            b"PK\x03\x04junk",
            b"\x80\x02K\x01.",
            &[0u8; 64],
        ] {
            let e = read_bytes(bytes, p).unwrap_err().to_string();
            assert!(e.starts_with("junk.pth: "), "{e}");
        }
    }
}

/// Against files written by real PyTorch (eval/reference/weights_reference.py).
#[cfg(test)]
mod fixtures {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("eval/reference/fixtures/weights")
            .join(name)
    }

    fn values(t: &Tensor) -> Vec<f64> {
        let t = t.flatten_all().unwrap();
        match t.dtype() {
            DType::F32 => t
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect(),
            DType::I64 => t
                .to_vec1::<i64>()
                .unwrap()
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            DType::U8 => t
                .to_vec1::<u8>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect(),
            d => panic!("unexpected dtype {d:?}"),
        }
    }

    /// Every dtype, a transposed view, two views of one storage, a parameter and a 0-d tensor
    /// read exactly as PyTorch holds them, from both formats.
    #[test]
    fn mixed_state_dict_in_both_formats() {
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("mixed_expected.json")).unwrap())
                .unwrap();
        let want = want.as_object().unwrap();
        for (name, format) in [
            ("mixed_zip.pth", Format::PytorchZip),
            ("mixed_legacy.pth", Format::PytorchLegacy),
        ] {
            let file = read(&fixture(name)).unwrap();
            assert_eq!(file.format, format);
            assert!(file.prefix_stripped, "{name}");
            assert_eq!(file.entries.len(), want.len(), "{name}");
            for e in &file.entries {
                let w = &want[&e.name];
                assert_eq!(
                    e.source_dtype,
                    w["dtype"].as_str().unwrap(),
                    "{name} {}",
                    e.name
                );
                let shape: Vec<usize> = serde_json::from_value(w["shape"].clone()).unwrap();
                assert_eq!(e.tensor.dims(), shape.as_slice(), "{name} {}", e.name);
                let v: Vec<f64> = serde_json::from_value(w["values"].clone()).unwrap();
                assert_eq!(values(&e.tensor), v, "{name} {}", e.name);
            }
        }
    }

    #[test]
    fn wrapped_state_dicts() {
        let want = read(&fixture("wrap_state_dict_legacy.pth")).unwrap();
        assert_eq!(want.wrapper.as_deref(), Some("state_dict"));
        assert_eq!(want.top_level_keys, ["epoch", "state_dict", "optimizer"]);
        let want = want.into_map();
        for (name, wrapper) in [
            ("wrap_params_ema.pth", "params_ema"),
            ("wrap_netG.pth", "netG"),
            ("wrap_model.pth", "model"),
            ("wrap_net.pth", "net"),
        ] {
            let file = read(&fixture(name)).unwrap();
            assert_eq!(file.wrapper.as_deref(), Some(wrapper), "{name}");
            let got = file.into_map();
            assert_eq!(got.len(), want.len(), "{name}");
            for (k, t) in &want {
                assert_eq!(values(&got[k]), values(t), "{name} {k}");
            }
        }
        let err = read(&fixture("wrap_none.pth")).unwrap_err().to_string();
        assert!(
            err.contains("wrap_none.pth") && err.contains("[epoch, best_psnr, opts]"),
            "{err}"
        );
    }

    /// A pickle that would call `os.system` is refused at the name, in both formats.
    #[test]
    fn forbidden_globals_are_refused() {
        for name in ["forbidden_zip.pth", "forbidden_legacy.pth"] {
            let err = read(&fixture(name)).unwrap_err().to_string();
            assert!(
                err.contains(name) && err.contains("forbidden global `posix.system`"),
                "{err}"
            );
        }
    }

    /// Every prefix of real files, and bytes flipped in them, give an error or (where the cut
    /// or flip misses everything read) the tensors: never a panic.
    #[test]
    fn truncated_and_damaged_files_fail_cleanly() {
        for name in [
            "mixed_legacy.pth",
            "mixed_zip.pth",
            "wrap_state_dict_legacy.pth",
        ] {
            let bytes = std::fs::read(fixture(name)).unwrap();
            for cut in 0..bytes.len() {
                assert!(
                    read_bytes(&bytes[..cut], Path::new(name)).is_err(),
                    "{name} cut at {cut}"
                );
            }
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..2000 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut b = bytes.clone();
                let i = (rng % b.len() as u64) as usize;
                b[i] ^= (rng >> 32) as u8 | 1;
                let _ = read_bytes(&b, Path::new(name));
            }
        }
    }

    /// The published-network fixture and the CycleGAN generator read the same from both
    /// formats.
    #[test]
    fn legacy_equals_zip() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/reference/fixtures");
        for (zip, legacy) in [
            ("prenet/prenet_paper.pth", "weights/prenet_paper_legacy.pth"),
            (
                "cyclegan/generator_ngf8_b2.pth",
                "weights/generator_ngf8_b2_legacy.pth",
            ),
        ] {
            let a = read_tensors(&root.join(zip)).unwrap();
            let b = read_tensors(&root.join(legacy)).unwrap();
            assert_eq!(a.len(), b.len());
            for (k, t) in &a {
                assert_eq!(values(t), values(&b[k]), "{k}");
            }
        }
    }
}

#[cfg(test)]
mod claims {
    use super::*;

    /// A legacy file whose first storage claims 100 GB (its element count patched) is refused
    /// from the bytes left, before anything of that size is allocated; so is a tensor whose
    /// size claims more than its storage holds.
    #[test]
    fn huge_claims_are_refused_before_allocating() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("eval/reference/fixtures/weights/mixed_legacy.pth");
        let bytes = std::fs::read(&path).unwrap();
        let mut m = Machine::new(&bytes);
        for _ in 0..5 {
            m.load().unwrap();
        }
        let at = m.position();
        let mut patched = bytes.clone();
        patched[at..at + 8].copy_from_slice(&(25u64 << 30).to_le_bytes());
        let e = read_bytes(&patched, &path).unwrap_err().to_string();
        assert!(e.contains("runs past the end of the file"), "{e}");
        let t = TensorRef {
            storage: StorageRef {
                kind: "FloatStorage".into(),
                key: "0".into(),
                location: "cpu".into(),
                numel: 4,
                view: None,
            },
            offset: 0,
            size: vec![100_000, 100_000, 100],
            stride: vec![10_000_000, 100, 1],
        };
        assert!(gather(&[0u8; 16], 4, "float32", &t).is_err());
    }
}
