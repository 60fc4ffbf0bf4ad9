//! Drives the trusted core: opens a package, streams it what it asks for, and runs the
//! public layers it hands out on the accelerator.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shadownet_ir::Tensor;
use shadownet_trusted::format::{
    self, ChunkMeta, PublicWeight, CHUNKS_FILE, PUBLIC_FILE, SECRET_FILE, SIGNATURE_FILE,
};
use shadownet_trusted::{
    pool, ChunkId, HostToTee, Payload, PoolEntryRef, PoolPart, Scheme, TeeError, TeeToHost,
};

use crate::{Accelerator, Enclave, Error, PublicModel, Result};

/// What the last inference cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub round_trips: usize,
    /// Time spent in the accelerator (the rest is the core, the transport and the host).
    pub accel: Duration,
    /// Bytes of sealed chunks and pool entry parts the core asked for (chunks it keeps
    /// open from an earlier inference are not asked for again).
    pub chunk_bytes: usize,
    /// Time spent in calls to the enclave: the trusted core's own time in process, plus
    /// the transport's for the enclave process.
    pub enclave: Duration,
}

pub struct SecureModel {
    pub public: PublicModel,
    stored: Stored,
    enclave: Box<dyn Enclave>,
    accel: Box<dyn Accelerator>,
    /// Bytes of the opened model the core keeps resident, as it reported.
    pub resident_bytes: u64,
    pub last: Stats,
    /// Where sealed one-time mask entries are kept (hardened packages).
    pool_dir: Option<PathBuf>,
    /// Let the trusted core make masks on the spot when the pool is empty.
    pub allow_slow_masks: bool,
}

/// The package's files as the host keeps them, from which it hands the core what it asks
/// for (lent, not copied, where the enclave takes borrowed buffers).
struct Stored {
    /// `public.bin` and where its weights region starts.
    public_bytes: Vec<u8>,
    weights_at: usize,
    chunks_file: Vec<u8>,
    chunk_table: Vec<ChunkMeta>,
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| Error::Io {
        path: p.display().to_string(),
        source: e,
    })
}

/// Pool entries are files named by their 16-digit index, used in order.
fn entry_name(index: u64) -> String {
    format!("{index:016}.entry")
}

fn unexpected(what: &str, r: &TeeToHost) -> Error {
    let name = match r {
        TeeToHost::Opened { .. } => "Opened",
        TeeToHost::RunLinear { .. } => "RunLinear",
        TeeToHost::NeedChunks { .. } => "NeedChunks",
        TeeToHost::PoolPart { .. } => "PoolPart",
        TeeToHost::PoolDone => "PoolDone",
        TeeToHost::Done { .. } => "Done",
        TeeToHost::Failed { .. } => "Failed",
    };
    Error::Protocol(format!("unexpected reply {name} {what}"))
}

impl SecureModel {
    /// Opens a package directory: the public part goes to the accelerator, the header, the
    /// sealed secret and the signature to the trusted core, which alone can open it.
    pub fn open(
        pkg: &Path,
        enclave: Box<dyn Enclave>,
        accel: Box<dyn Accelerator>,
    ) -> Result<Self> {
        let public_path = pkg.join(PUBLIC_FILE);
        let public = read(&public_path)?;
        let sealed = read(&pkg.join(SECRET_FILE))?;
        let signature = read(&pkg.join(SIGNATURE_FILE))?;
        let chunks = read(&pkg.join(CHUNKS_FILE))?;
        let mut m = Self::from_parts(public, sealed, signature, chunks, enclave, accel).map_err(
            |e| match e {
                Error::Tee(t) => Error::BadFile {
                    path: pkg.display().to_string(),
                    what: t.to_string(),
                },
                e => e,
            },
        )?;
        m.pool_dir = Some(pkg.join("pool"));
        Ok(m)
    }

    pub fn from_parts(
        public: Vec<u8>,
        sealed: Vec<u8>,
        signature: Vec<u8>,
        chunks_file: Vec<u8>,
        mut enclave: Box<dyn Enclave>,
        mut accel: Box<dyn Accelerator>,
    ) -> Result<Self> {
        let (model, weights_at) = PublicModel::decode(&public).map_err(Error::Tee)?;
        let chunk_table = format::chunk_table(&chunks_file).ok_or_else(|| Error::BadFile {
            path: CHUNKS_FILE.into(),
            what: "not a shadownet chunk file, or truncated".into(),
        })?;
        accel.load(&model)?;
        match enclave.call(HostToTee::Open {
            public_header: public[..weights_at].to_vec(),
            sealed,
            signature,
        })? {
            TeeToHost::Opened {
                layers,
                resident_bytes,
            } if layers as usize == model.header.layers.len() => Ok(SecureModel {
                public: model,
                stored: Stored {
                    public_bytes: public,
                    weights_at,
                    chunks_file,
                    chunk_table,
                },
                enclave,
                accel,
                resident_bytes,
                last: Stats::default(),
                pool_dir: None,
                allow_slow_masks: false,
            }),
            TeeToHost::Failed { error } => Err(Error::Tee(error)),
            other => Err(unexpected("to Open", &other)),
        }
    }

    pub fn scheme(&self) -> Scheme {
        self.public.header.scheme
    }

    /// The enclave's heap statistics (enclave process only).
    pub fn enclave_memory(&mut self) -> Result<Option<shadownet_enclave::wire::MemoryStats>> {
        self.enclave.memory()
    }

    /// Runs one inference on the model inputs (in model-input order).
    pub fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        // Driven from a worker of the CPU accelerator's pool: each layer then starts on
        // this thread at once, while an idle pool asleep through the trusted core's turn
        // wakes up beside it.
        rayon::scope(|_| self.infer_here(inputs))
    }

    fn infer_here(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.last = Stats::default();
        let entry = match self.scheme() {
            Scheme::Hardened => self.next_pool_entry()?,
            Scheme::ShadowNet => None,
        };
        let pool_entry = match &entry {
            Some((_, bytes)) => Some(self.entry_ref(bytes)?),
            None => None,
        };
        let t0 = Instant::now();
        let mut reply = self.enclave.call(HostToTee::Begin {
            inputs,
            pool_entry,
            allow_slow_masks: self.allow_slow_masks,
        })?;
        self.last.enclave += t0.elapsed();
        // An entry the core took, or refused as spent or unreadable, is useless from now
        // on; one it never looked at (bad inputs) stays for the next inference.
        if let Some((path, _)) = &entry {
            let untouched = matches!(
                &reply,
                TeeToHost::Failed {
                    error: TeeError::InputCount
                        | TeeError::InputShape { .. }
                        | TeeError::Poisoned
                        | TeeError::UnexpectedMessage
                }
            );
            if !untouched {
                let _ = std::fs::remove_file(path);
            }
        }
        let entry_bytes = entry.map(|(_, b)| b);
        loop {
            reply = match reply {
                TeeToHost::RunLinear {
                    layer,
                    input,
                    prefetch,
                } => {
                    self.last.round_trips += 1;
                    let t0 = Instant::now();
                    let output = match &input {
                        Payload::F32(x) => Payload::F32(self.accel.run(layer, x)?),
                        Payload::Ring(x) => Payload::Ring(self.accel.run_ring(layer, x)?),
                    };
                    self.last.accel += t0.elapsed();
                    drop(input);
                    let header = &self.public.header;
                    let lent = prefetch
                        .iter()
                        .map(|&id| self.stored.chunk(header, id, entry_bytes.as_deref()))
                        .collect::<Result<Vec<&[u8]>>>()?;
                    self.last.chunk_bytes += lent.iter().map(|c| c.len()).sum::<usize>();
                    let t0 = Instant::now();
                    let reply = self.enclave.linear_done(layer, &output, &lent)?;
                    self.last.enclave += t0.elapsed();
                    reply
                }
                TeeToHost::NeedChunks { ids } => {
                    let chunks = self.chunks(&ids, entry_bytes.as_deref())?;
                    self.last.chunk_bytes += chunks.iter().map(Vec::len).sum::<usize>();
                    let t0 = Instant::now();
                    let r = self.enclave.call(HostToTee::Chunks { chunks })?;
                    self.last.enclave += t0.elapsed();
                    r
                }
                TeeToHost::Done { outputs } => return Ok(outputs),
                TeeToHost::Failed { error } => return Err(Error::Tee(error)),
                other => return Err(unexpected("during inference", &other)),
            };
        }
    }

    /// The bytes the core asked for, in its order.
    fn chunks(&self, ids: &[ChunkId], entry: Option<&[u8]>) -> Result<Vec<Vec<u8>>> {
        ids.iter()
            .map(|&id| {
                self.stored
                    .chunk(&self.public.header, id, entry)
                    .map(<[u8]>::to_vec)
            })
            .collect()
    }

    fn entry_ref(&self, bytes: &[u8]) -> Result<PoolEntryRef> {
        let header = &self.public.header;
        let last = header.layers.len() as u32 - 1;
        let (at, len) = body_range(header, last)?;
        let body_end = at + len;
        if bytes.len() < body_end {
            return Err(Error::Tee(TeeError::PoolCorrupt));
        }
        Ok(PoolEntryRef {
            prefix: bytes[..pool::PREFIX].to_vec(),
            header: bytes[body_end..].to_vec(),
        })
    }

    /// The lowest-numbered pool entry file, if any. A missing pool directory is an empty
    /// pool; one that cannot be read is an error.
    fn next_pool_entry(&self) -> Result<Option<(PathBuf, Vec<u8>)>> {
        let Some(dir) = &self.pool_dir else {
            return Ok(None);
        };
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Io {
                    path: dir.display().to_string(),
                    source: e,
                })
            }
        };
        let mut names = Vec::new();
        for e in rd {
            let p = e
                .map_err(|e| Error::Io {
                    path: dir.display().to_string(),
                    source: e,
                })?
                .path();
            if p.extension().is_some_and(|x| x == "entry") {
                names.push(p);
            }
        }
        names.sort();
        match names.into_iter().next() {
            Some(p) => {
                let b = read(&p)?;
                Ok(Some((p, b)))
            }
            None => Ok(None),
        }
    }

    /// Entries left in the pool.
    pub fn pool_len(&self) -> usize {
        self.pool_dir
            .as_ref()
            .and_then(|d| std::fs::read_dir(d).ok())
            .map_or(0, |rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "entry"))
                    .count()
            })
    }

    /// Has the trusted core make `count` one-time mask entries and stores them in the
    /// package's pool, calling `progress(done, count)` after each. Returns the bytes of an
    /// entry.
    pub fn precompute(
        &mut self,
        count: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<u64> {
        let dir = self.pool_dir.clone().ok_or_else(|| {
            Error::Protocol("this package has no directory for a mask pool".into())
        })?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        let io = |p: &Path, e: std::io::Error| Error::Io {
            path: p.display().to_string(),
            source: e,
        };
        let mut done = 0;
        let mut entry_bytes = 0u64;
        while done < count {
            let n = (count - done).min(shadownet_trusted::MAX_PRECOMPUTE as usize);
            let mut reply = self
                .enclave
                .call(HostToTee::Precompute { count: n as u32 })?;
            let mut file: Option<(std::fs::File, PathBuf, u64)> = None;
            loop {
                reply = match reply {
                    TeeToHost::NeedChunks { ids } => {
                        let chunks = self.chunks(&ids, None)?;
                        self.enclave.call(HostToTee::Chunks { chunks })?
                    }
                    TeeToHost::PoolPart { index, part } => {
                        use std::io::Write;
                        match part {
                            PoolPart::Prefix(b) => {
                                let tmp = dir.join(format!(".{index:016}.partial"));
                                let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
                                f.write_all(&b).map_err(|e| io(&tmp, e))?;
                                file = Some((f, tmp, b.len() as u64));
                            }
                            part => {
                                let last = matches!(part, PoolPart::Header(_));
                                let (PoolPart::Body { bytes, .. } | PoolPart::Header(bytes)) = part
                                else {
                                    unreachable!("the prefix is handled above")
                                };
                                let Some((f, tmp, len)) = file.as_mut() else {
                                    return Err(Error::Protocol(
                                        "a pool entry part before its prefix".into(),
                                    ));
                                };
                                f.write_all(&bytes).map_err(|e| io(tmp, e))?;
                                *len += bytes.len() as u64;
                                if last {
                                    let (f, tmp, len) = file.take().expect("checked above");
                                    f.sync_all().map_err(|e| io(&tmp, e))?;
                                    let dst = dir.join(entry_name(index));
                                    std::fs::rename(&tmp, &dst).map_err(|e| io(&dst, e))?;
                                    entry_bytes = len;
                                    done += 1;
                                    progress(done, count);
                                }
                            }
                        }
                        self.enclave.call(HostToTee::Continue)?
                    }
                    TeeToHost::PoolDone => break,
                    TeeToHost::Failed { error } => return Err(Error::Tee(error)),
                    other => return Err(unexpected("to Precompute", &other)),
                };
            }
        }
        Ok(entry_bytes)
    }

    /// The public weights of layer `l` (attacks, exports).
    pub fn public_weight(&self, l: usize) -> Option<&PublicWeight> {
        self.public.weights.get(l)
    }
}

impl Stored {
    /// One thing the core asked for, where this host holds it: a sealed chunk, a public
    /// layer's weights, or a layer's part of the pool entry.
    fn chunk<'a>(
        &'a self,
        header: &shadownet_trusted::PublicHeader,
        id: ChunkId,
        entry: Option<&'a [u8]>,
    ) -> Result<&'a [u8]> {
        match id {
            ChunkId::Secret(i) => {
                let m = self.chunk_table.get(i as usize).ok_or_else(|| {
                    Error::Protocol(format!(
                        "the core asked for chunk {i}, which the chunk file does not have"
                    ))
                })?;
                Ok(&self.chunks_file[m.offset as usize..(m.offset + m.len) as usize])
            }
            ChunkId::PublicWeight(l) => self.weight_blob(header, l),
            ChunkId::PoolBody(l) => match entry {
                Some(e) => {
                    let (at, len) = body_range(header, l)?;
                    e.get(at..at + len).ok_or_else(|| {
                        Error::Protocol(format!("the pool entry is too short for layer {l}"))
                    })
                }
                // Without an entry the core makes the masks itself from the weights.
                None => self.weight_blob(header, l),
            },
        }
    }

    fn weight_blob(&self, header: &shadownet_trusted::PublicHeader, l: u32) -> Result<&[u8]> {
        let layer = header
            .layers
            .get(l as usize)
            .ok_or_else(|| Error::Protocol(format!("no public layer {l}")))?;
        format::weight_blob(&self.public_bytes[self.weights_at..], layer).map_err(Error::Tee)
    }
}

/// Where layer `l`'s correction lies in a pool entry file: after the prefix, the
/// corrections of the layers before it (8 bytes per public output value).
fn body_range(header: &shadownet_trusted::PublicHeader, l: u32) -> Result<(usize, usize)> {
    let sizes: Vec<usize> = header
        .layers
        .iter()
        .map(|pl| pl.output_shape.iter().product::<usize>() * 8)
        .collect();
    let l = l as usize;
    if l >= sizes.len() {
        return Err(Error::Protocol(format!("no public layer {l}")));
    }
    Ok((pool::PREFIX + sizes[..l].iter().sum::<usize>(), sizes[l]))
}
