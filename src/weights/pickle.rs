//! A restricted unpickler: the subset of Python's pickle machine (protocols 0–5) that PyTorch
//! state dicts use, with an allow-list of globals instead of imports.
//!
//! Loading weights never runs code: `GLOBAL`/`STACK_GLOBAL` resolve only the names in
//! [`allowed`] (containers, PyTorch's tensor-rebuild functions and storage types); any other
//! name is an error naming it. `REDUCE`/`NEWOBJ` apply those few functions as data constructors
//! here in Rust. Persistent ids (`BINPERSID`) become [`Value::Storage`] references that the
//! caller resolves against the file's storages.
//!
//! Values live in an arena ([`Machine::values`]) and are referred to by index, so `DUP`, memo
//! gets and shared sub-objects cost nothing, mutation (`APPEND`, `SETITEM`) is in place as in
//! Python, and memory grows at most linearly with the input: every opcode adds at most one
//! value, and every length is checked against the bytes left before anything is allocated.

use std::collections::HashMap;

/// Index of a value in the machine's arena.
pub type Id = usize;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error("truncated pickle (needs {needed} more bytes at offset {offset})")]
    Truncated { offset: usize, needed: usize },
    #[error("forbidden global `{0}` (loading weights never imports code; only PyTorch's tensor and container types are allowed)")]
    Forbidden(String),
    #[error("unsupported pickle opcode 0x{op:02x} at offset {offset}")]
    Opcode { op: u8, offset: usize },
    #[error("malformed pickle at offset {offset}: {why}")]
    Malformed { offset: usize, why: String },
}

type Result<T> = std::result::Result<T, PickleError>;

/// A storage reference from a persistent id: `('storage', torch.FloatStorage, key, location,
/// numel[, view_metadata])`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// Storage type name, e.g. `FloatStorage` (the `torch.` / `torch.cuda.` module dropped).
    pub kind: String,
    pub key: String,
    /// Where it was saved from (`cpu`, `cuda:0`), informational.
    pub location: String,
    /// Elements in the storage.
    pub numel: u64,
    /// Legacy views: `(offset, numel)` into the root storage `key`.
    pub view: Option<(u64, u64)>,
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, …)`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64, as little-endian two's complement bytes (`LONG1`/`LONG4`).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    /// Dicts and `OrderedDict`s, in insertion order.
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// An allowed global, not yet applied.
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// The globals a state dict may name.
#[derive(Clone, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Set,
    CodecsEncode,
    /// `torch.FloatStorage`, `torch.cuda.HalfStorage`, … (the type name).
    StorageType(String),
}

/// Storage type names PyTorch pickles (CPU and CUDA alike).
pub const STORAGE_TYPES: [&str; 11] = [
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "UntypedStorage",
];

/// The allow-list: which `module.name` a pickle may refer to.
pub fn allowed(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Global::RebuildParameter
        }
        ("builtins" | "__builtin__", "set" | "frozenset") => Global::Set,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("torch" | "torch.cuda", n) if STORAGE_TYPES.contains(&n) => {
            Global::StorageType(n.to_string())
        }
        _ => return None,
    })
}

/// Longest `GLOBAL` text line accepted (module or name).
const MAX_LINE: usize = 1024;
/// Deepest nesting of marks.
const MAX_MARKS: usize = 4096;

/// The pickle machine over one input.
pub struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    pub values: Vec<Value>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

impl<'a> Machine<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Machine {
            data,
            pos: 0,
            values: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    /// Offset just past the last `STOP` read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Runs one pickle from the current position to its `STOP`, returning the result. The arena
    /// is kept, so several pickles in sequence (PyTorch's legacy format) share it; the memo and
    /// the stacks start empty for each, as for Python's `pickle.load` per call.
    pub fn load(&mut self) -> Result<Id> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.malformed(at, format!("pickle protocol {p}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.take(8)?;
                }
                b'.' => {
                    // STOP
                    let top = self.pop(at)?;
                    return Ok(top);
                }
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.malformed(at, "marks nested too deeply".into()));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop(at)?;
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let top = *self.stack.last().ok_or_else(|| self.empty(at))?;
                    self.stack.push(top);
                }
                // Integers.
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long_value(bytes));
                }
                0x8b => {
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long_value(bytes));
                }
                b'I' => {
                    // INT (text): also True/False as 01/00.
                    let line = self.line()?;
                    let v =
                        match line.as_str() {
                            "01" => Value::Bool(true),
                            "00" => Value::Bool(false),
                            s => Value::Int(s.parse().map_err(|_| {
                                self.malformed(at, format!("bad INT literal `{s}`"))
                            })?),
                        };
                    self.push(v);
                }
                b'L' => {
                    let line = self.line()?;
                    let s = line.trim_end_matches('L');
                    let v: i64 = s
                        .parse()
                        .map_err(|_| self.malformed(at, format!("bad LONG literal `{line}`")))?;
                    self.push(Value::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v));
                }
                b'F' => {
                    let line = self.line()?;
                    let v: f64 = line
                        .parse()
                        .map_err(|_| self.malformed(at, format!("bad FLOAT literal `{line}`")))?;
                    self.push(Value::Float(v));
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                // Strings and bytes.
                b'X' => {
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    let s = self.utf8(n, at)?;
                    self.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.utf8(n, at)?;
                    self.push(Value::Str(s));
                }
                0x8d => {
                    let n = self.len64()?;
                    let s = self.utf8(n, at)?;
                    self.push(Value::Str(s));
                }
                b'T' => {
                    // BINSTRING (Python 2 str): bytes, read as Latin-1 text.
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    let s = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.push(Value::Str(s));
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.push(Value::Str(s));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                // Containers.
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                b'}' => self.push(Value::Dict(Vec::new())),
                0x8f => self.push(Value::Set(Vec::new())),
                b'l' => {
                    let items = self.pop_mark(at)?;
                    self.push(Value::List(items));
                }
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.empty(at));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items));
                }
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let pairs = pairs(items, at)?;
                    self.push(Value::Dict(pairs));
                }
                0x91 => {
                    let items = self.pop_mark(at)?;
                    self.push(Value::Set(items));
                }
                b'a' => {
                    let item = self.pop(at)?;
                    let list = self.top(at)?;
                    self.extend(list, vec![item], at)?;
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    let list = self.top(at)?;
                    self.extend(list, items, at)?;
                }
                0x90 => {
                    let items = self.pop_mark(at)?;
                    let set = self.top(at)?;
                    self.extend(set, items, at)?;
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let d = self.top(at)?;
                    self.set_items(d, vec![(k, v)], at)?;
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    let kv = pairs(items, at)?;
                    let d = self.top(at)?;
                    self.set_items(d, kv, at)?;
                }
                // Memo.
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k, at)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.array()?) as u64;
                    self.memo_put(k, at)?;
                }
                b'p' => {
                    let line = self.line()?;
                    let k = line
                        .parse()
                        .map_err(|_| self.malformed(at, format!("bad PUT key `{line}`")))?;
                    self.memo_put(k, at)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k, at)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k, at)?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.array()?) as u64;
                    self.memo_get(k, at)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let k = line
                        .parse()
                        .map_err(|_| self.malformed(at, format!("bad GET key `{line}`")))?;
                    self.memo_get(k, at)?;
                }
                // Globals and construction.
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = allowed(&module, &name).ok_or_else(|| forbidden(&module, &name))?;
                    self.push(Value::Global(g));
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Value::Str(module), Value::Str(name)) =
                        (&self.values[module], &self.values[name])
                    else {
                        return Err(self.malformed(at, "STACK_GLOBAL of non-strings".into()));
                    };
                    let g = allowed(module, name).ok_or_else(|| forbidden(module, name))?;
                    self.push(Value::Global(g));
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: callable(*args), for the allowed constructors.
                    let args = self.pop(at)?;
                    let f = self.pop(at)?;
                    let v = self.apply(f, args, at)?;
                    self.push(v);
                }
                0x92 => {
                    // NEWOBJ_EX: cls, args, kwargs (kwargs must be empty).
                    let kwargs = self.pop(at)?;
                    let args = self.pop(at)?;
                    let f = self.pop(at)?;
                    if !matches!(&self.values[kwargs], Value::Dict(d) if d.is_empty()) {
                        return Err(self.malformed(at, "NEWOBJ_EX with keyword arguments".into()));
                    }
                    let v = self.apply(f, args, at)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: object state (an OrderedDict's `_metadata`, a tensor's hooks):
                    // not needed for the weights, dropped.
                    self.pop(at)?;
                    self.top(at)?;
                }
                b'Q' => {
                    let pid = self.pop(at)?;
                    let v = self.persistent(pid, at)?;
                    self.push(v);
                }
                _ => return Err(PickleError::Opcode { op, offset: at }),
            }
        }
    }

    fn malformed(&self, offset: usize, why: String) -> PickleError {
        PickleError::Malformed { offset, why }
    }

    fn empty(&self, offset: usize) -> PickleError {
        self.malformed(offset, "stack underflow".into())
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(PickleError::Truncated {
                offset: self.pos,
                needed: n - left,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn len64(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.array()?);
        // Larger than the input can hold: `take` reports the truncation.
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn utf8(&mut self, n: usize, at: usize) -> Result<String> {
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| self.malformed(at, "string is not UTF-8".into()))
    }

    /// A text line (protocol 0 arguments), without its newline.
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .take(MAX_LINE + 1)
            .position(|&b| b == b'\n')
            .ok_or(if rest.len() <= MAX_LINE {
                PickleError::Truncated {
                    offset: self.pos,
                    needed: 1,
                }
            } else {
                PickleError::Malformed {
                    offset: self.pos,
                    why: "text argument too long".into(),
                }
            })?;
        let line = rest[..end].iter().map(|&b| b as char).collect();
        self.pos += end + 1;
        Ok(line)
    }

    fn push(&mut self, v: Value) {
        self.values.push(v);
        self.stack.push(self.values.len() - 1);
    }

    fn pop(&mut self, at: usize) -> Result<Id> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.malformed(at, "pop across a mark".into()));
        }
        self.stack.pop().ok_or_else(|| self.empty(at))
    }

    fn top(&self, at: usize) -> Result<Id> {
        self.stack.last().copied().ok_or_else(|| self.empty(at))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<Id>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed(at, "no mark".into()))?;
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, k: u64, at: usize) -> Result<()> {
        let top = self.top(at)?;
        self.memo.insert(k, top);
        Ok(())
    }

    fn memo_get(&mut self, k: u64, at: usize) -> Result<()> {
        let id = *self
            .memo
            .get(&k)
            .ok_or_else(|| self.malformed(at, format!("memo key {k} was never set")))?;
        self.stack.push(id);
        Ok(())
    }

    fn extend(&mut self, target: Id, items: Vec<Id>, at: usize) -> Result<()> {
        match &mut self.values[target] {
            Value::List(v) | Value::Set(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(self.malformed(at, "append to a non-list".into())),
        }
    }

    fn set_items(&mut self, target: Id, kv: Vec<(Id, Id)>, at: usize) -> Result<()> {
        match &mut self.values[target] {
            Value::Dict(d) => {
                d.extend(kv);
                Ok(())
            }
            _ => Err(self.malformed(at, "set item on a non-dict".into())),
        }
    }

    /// Items of a tuple or list value.
    pub fn items(&self, id: Id) -> Option<&[Id]> {
        match &self.values[id] {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    pub fn str(&self, id: Id) -> Option<&str> {
        match &self.values[id] {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn uint(&self, id: Id) -> Option<u64> {
        match self.values[id] {
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    fn uints(&self, id: Id) -> Option<Vec<u64>> {
        self.items(id)?.iter().map(|&i| self.uint(i)).collect()
    }

    /// A dict's entries with the latest value per key (Python's semantics for repeated keys).
    pub fn dict(&self, id: Id) -> Option<&[(Id, Id)]> {
        match &self.values[id] {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    fn apply(&mut self, f: Id, args: Id, at: usize) -> Result<Value> {
        let Value::Global(g) = self.values[f].clone() else {
            return Err(self.malformed(at, "call of a non-callable".into()));
        };
        let args: Vec<Id> = self
            .items(args)
            .ok_or_else(|| self.malformed(at, "call arguments are not a tuple".into()))?
            .to_vec();
        let bad = |m: &Self, what: &str| m.malformed(at, format!("bad arguments to {what}"));
        match g {
            Global::OrderedDict => match args.as_slice() {
                [] => Ok(Value::Dict(Vec::new())),
                [items] => {
                    let pairs = self
                        .items(*items)
                        .ok_or_else(|| bad(self, "OrderedDict"))?
                        .iter()
                        .map(|&p| match self.items(p) {
                            Some(&[k, v]) => Ok((k, v)),
                            _ => Err(bad(self, "OrderedDict")),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Value::Dict(pairs))
                }
                _ => Err(bad(self, "OrderedDict")),
            },
            Global::Set => match args.as_slice() {
                [] => Ok(Value::Set(Vec::new())),
                [items] => Ok(Value::Set(
                    self.items(*items).ok_or_else(|| bad(self, "set"))?.to_vec(),
                )),
                _ => Err(bad(self, "set")),
            },
            Global::CodecsEncode => match args.as_slice() {
                [s, enc] if matches!(self.str(*enc), Some("latin1" | "latin-1")) => {
                    let s = self.str(*s).ok_or_else(|| bad(self, "_codecs.encode"))?;
                    let bytes: Option<Vec<u8>> =
                        s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                    Ok(Value::Bytes(
                        bytes.ok_or_else(|| bad(self, "_codecs.encode"))?,
                    ))
                }
                _ => Err(bad(self, "_codecs.encode")),
            },
            Global::RebuildParameter => match args.first() {
                Some(&data) if matches!(self.values[data], Value::Tensor(_)) => {
                    Ok(self.values[data].clone())
                }
                _ => Err(bad(self, "_rebuild_parameter")),
            },
            Global::RebuildTensor => {
                let (Some(&s), Some(&off), Some(&size), Some(&stride)) =
                    (args.first(), args.get(1), args.get(2), args.get(3))
                else {
                    return Err(bad(self, "_rebuild_tensor"));
                };
                let Value::Storage(storage) = &self.values[s] else {
                    return Err(bad(self, "_rebuild_tensor (no storage)"));
                };
                let (Some(offset), Some(size), Some(stride)) =
                    (self.uint(off), self.uints(size), self.uints(stride))
                else {
                    return Err(bad(self, "_rebuild_tensor (offset, size, stride)"));
                };
                if size.len() != stride.len() {
                    return Err(bad(
                        self,
                        "_rebuild_tensor (size and stride differ in rank)",
                    ));
                }
                Ok(Value::Tensor(TensorRef {
                    storage: storage.clone(),
                    offset,
                    size,
                    stride,
                }))
            }
            Global::StorageType(t) => {
                Err(self.malformed(at, format!("call of storage type {t} (not a state dict)")))
            }
        }
    }

    fn persistent(&mut self, pid: Id, at: usize) -> Result<Value> {
        let items = self
            .items(pid)
            .ok_or_else(|| self.malformed(at, "persistent id is not a tuple".into()))?
            .to_vec();
        match items.first().and_then(|&i| self.str(i)) {
            Some("storage") => {}
            Some("module") => {
                return Err(self.malformed(
                    at,
                    "the file pickles a whole model (its Python classes), not a state dict; \
                     re-save it with torch.save(model.state_dict(), …)"
                        .into(),
                ))
            }
            other => {
                return Err(self.malformed(at, format!("persistent id of kind {other:?}")));
            }
        }
        let bad = |m: &Self, why: &str| m.malformed(at, format!("storage id: {why}"));
        let (Some(&ty), Some(&key), Some(&loc), Some(&numel)) =
            (items.get(1), items.get(2), items.get(3), items.get(4))
        else {
            return Err(bad(self, "too few fields"));
        };
        let Value::Global(Global::StorageType(kind)) = &self.values[ty] else {
            return Err(bad(self, "no storage type"));
        };
        let key = match &self.values[key] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return Err(bad(self, "key")),
        };
        let location = self.str(loc).unwrap_or("?").to_string();
        let numel = self.uint(numel).ok_or_else(|| bad(self, "size"))?;
        let view = match items.get(5).map(|&v| &self.values[v]) {
            None | Some(Value::None) => None,
            Some(Value::Tuple(t)) if t.len() == 3 => {
                // (view_key, offset, view_numel): this id names a view into root `key`.
                match (self.uint(t[1]), self.uint(t[2])) {
                    (Some(o), Some(n)) => Some((o, n)),
                    _ => return Err(bad(self, "view metadata")),
                }
            }
            Some(_) => return Err(bad(self, "view metadata")),
        };
        Ok(Value::Storage(StorageRef {
            kind: kind.clone(),
            key,
            location,
            numel,
            view,
        }))
    }
}

/// The refusal of `module.name`, printable whatever bytes the names hold.
fn forbidden(module: &str, name: &str) -> PickleError {
    let full: String = format!("{module}.{name}").escape_debug().collect();
    let short: String = full.chars().take(120).collect();
    PickleError::Forbidden(if short.len() < full.len() {
        format!("{short}…")
    } else {
        short
    })
}

fn pairs(items: Vec<Id>, at: usize) -> Result<Vec<(Id, Id)>> {
    if !items.len().is_multiple_of(2) {
        return Err(PickleError::Malformed {
            offset: at,
            why: "odd number of dict items".into(),
        });
    }
    Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

/// `LONG1`/`LONG4` payload: little-endian two's complement.
fn long_value(bytes: Vec<u8>) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut b = [if negative { 0xff } else { 0 }; 8];
        b[..bytes.len()].copy_from_slice(&bytes);
        return Value::Int(i64::from_le_bytes(b));
    }
    Value::BigInt(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    const MAGIC_LE: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

    fn run(bytes: &[u8]) -> Result<Value> {
        let mut m = Machine::new(bytes);
        let id = m.load()?;
        Ok(m.values[id].clone())
    }

    /// `pickle.dumps({'a': [1, 2.5, 'x'], 'b': (True, None)}, protocol=2)` by CPython 3.11.
    #[test]
    fn reads_cpython_protocol_2() {
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04\x88N\x86q\x05u.";
        let mut m = Machine::new(bytes);
        let id = m.load().unwrap();
        let d = m.dict(id).unwrap().to_vec();
        assert_eq!(d.len(), 2);
        assert_eq!(m.str(d[0].0), Some("a"));
        let list = m.items(d[0].1).unwrap().to_vec();
        assert_eq!(m.values[list[0]], Value::Int(1));
        assert_eq!(m.values[list[1]], Value::Float(2.5));
        assert_eq!(m.str(list[2]), Some("x"));
        let t = m.items(d[1].1).unwrap().to_vec();
        assert_eq!(m.values[t[0]], Value::Bool(true));
        assert_eq!(m.values[t[1]], Value::None);
        assert_eq!(m.position(), bytes.len());
    }

    /// `pickle.dumps(os.system, protocol=2)` names `posix.system`: refused at the GLOBAL, before
    /// anything could call it.
    #[test]
    fn refuses_forbidden_globals() {
        let err = run(b"\x80\x02cposix\nsystem\nq\x00.").unwrap_err();
        assert_eq!(err, PickleError::Forbidden("posix.system".into()));
        let err = run(b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93.")
            .unwrap_err();
        assert_eq!(err, PickleError::Forbidden("os.system".into()));
    }

    #[test]
    fn big_and_negative_longs() {
        // The legacy format's magic number 0x1950a86a20f9469cfc6c as LONG1.
        let v = run(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.").unwrap();
        assert_eq!(v, Value::BigInt(MAGIC_LE.to_vec()));
        assert_eq!(run(b"\x8a\x01\xff.").unwrap(), Value::Int(-1));
        assert_eq!(run(b"\x8a\x02\xe9\x03.").unwrap(), Value::Int(1001));
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\x80",
            b"\x80\x02",
            b"\x80\x02.",
            b"\x80\x02a.",
            b"\x80\x02(.",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x80\x02h\x07.",
            b"\x80\x02K\x01K\x02s.",
            b"\x80\x02cos\n",
            b"\x80\x02)R.",
            b"\x80\x02\xff",
        ] {
            assert!(run(bad).is_err(), "{bad:?}");
        }
    }
}
