//! The fuzz targets, each run for `SHADOWNET_FUZZ_SECS` (scripts/test.sh: 10 s each).
//! None may panic on any input; errors are the expected answer.
use std::io::Cursor;
use std::path::PathBuf;

use shadownet_fuzz::{corpus, run};
use shadownet_ir::{Conv, Graph, IntTensor, RingTensor, Tensor};
use shadownet_trusted::format::{self, PublicWeight, SECRET_MAGIC};
use shadownet_trusted::{
    HostToTee, LinearKind, Payload, PoolEntryRef, Scheme, TeeError, TeeToHost, TrustedCore,
};

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    std::env::var_os("SHADOWNET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| here().join("../../target/fixtures"))
}

#[test]
fn onnx_import() {
    let mut extra = Vec::new();
    if let Ok(b) = std::fs::read(here().join("../../models/demo/ppocr_cls.onnx")) {
        extra.push(b);
    }
    let c = corpus(&here().join("corpus/onnx"), extra);
    run("onnx_import", &c, 11, |d| {
        let _ = shadownet_import::load_model_bytes(d, &[]);
        let _ = shadownet_import::load_model_bytes(d, &[("x".into(), vec![1, 3, 8, 8])]);
    });
}

#[test]
fn tflite_import() {
    let mut extra = Vec::new();
    for name in ["face_detection_short_range", "selfie_segmentation"] {
        let p = fixtures().join(format!("models/{name}.tflite"));
        extra.push(std::fs::read(&p).unwrap_or_else(|e| {
            panic!("{}: {e} (run scripts/make-fixtures.sh)", p.display())
        }));
    }
    let c = corpus(&here().join("corpus/tflite"), extra);
    run("tflite_import", &c, 12, |d| {
        let _ = shadownet_import::load_model_bytes(d, &[]);
    });
}

#[test]
fn npy_and_npz() {
    let t = |shape: &[usize]| Tensor {
        shape: shape.to_vec(),
        data: (0..shape.iter().product::<usize>()).map(|i| i as f32).collect(),
    };
    let mut extra: Vec<Vec<u8>> = [&[2usize, 3][..], &[1, 1, 4, 4], &[5], &[]]
        .iter()
        .map(|s| shadownet::npy::npy_bytes(&t(s)))
        .collect();
    let dir = std::env::temp_dir().join(format!("shadownet-fuzz-npz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let npz = dir.join("a.npz");
    let a = t(&[2, 2]);
    let b = t(&[3]);
    shadownet::npy::write_npz(&npz, &[("a".into(), &a), ("b".into(), &b)]).unwrap();
    extra.push(std::fs::read(&npz).unwrap());
    let c = corpus(&here().join("corpus/npy"), extra);
    run("npy_npz", &c, 13, |d| {
        let _ = shadownet::npy::parse_npy(d);
        let _ = shadownet::npy::parse_npz(Cursor::new(d));
    });
}

/// A small model with every kind of outsourced layer and a kept (depthwise) one.
fn small_model() -> Graph {
    use shadownet_ir::{Activation, Op};
    let mut s = 3u64;
    let mut w = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            data: (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % 2001) as f32 / 2000.0 - 0.5
                })
                .collect(),
        }
    };
    let conv = |g: usize| Conv {
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [1; 4],
        groups: g,
    };
    let mut g = Graph::new();
    let x = g.add_input("x", vec![1, 3, 6, 6]);
    let w1 = g.add_const("w1", w(&[4, 3, 3, 3]));
    let b1 = g.add_const("b1", w(&[4]));
    let h = g.add_node("c1", Op::Conv(conv(1)), vec![x, w1, b1], &[]).unwrap()[0];
    let h = g.add_node("r1", Op::Act(Activation::Relu), vec![h], &[]).unwrap()[0];
    let wd = g.add_const("wd", w(&[4, 1, 3, 3]));
    let h = g.add_node("dw", Op::Conv(conv(4)), vec![h, wd], &[]).unwrap()[0];
    let h = g
        .add_node("flat", Op::Reshape { shape: vec![1, 144] }, vec![h], &[])
        .unwrap()[0];
    let w3 = g.add_const("w3", w(&[144, 3]));
    let y = g.add_node("fc", Op::MatMul, vec![h, w3], &[]).unwrap()[0];
    g.outputs = vec![y];
    g
}

struct Fixture {
    header_region: Vec<u8>,
    secret_plain: Vec<u8>,
    weights: Vec<PublicWeight>,
    layers: Vec<format::PublicLayer>,
    record: Vec<u8>,
}

fn fixture(scheme: Scheme) -> Fixture {
    let g = small_model();
    let opts = shadownet_protect::Options {
        scheme,
        insecure_seed: Some(5),
        ..Default::default()
    };
    let c = shadownet_protect::convert(&g, &opts, &mut |_, _| {}).unwrap();
    let header_region = shadownet_protect::encode_header(&c.header).unwrap();
    let weights = c
        .header
        .layers
        .iter()
        .zip(&c.weights)
        .map(|(l, b)| format::decode_weight(l, b).unwrap())
        .collect();
    let record = shadownet_trusted::crypto::DeviceRecord {
        secret: zeroize::Zeroizing::new([9; 32]),
        pinned: vec![],
    }
    .encode()
    .to_vec();
    Fixture {
        header_region,
        secret_plain: postcard::to_allocvec(&c.secret).unwrap(),
        weights,
        layers: c.header.layers.clone(),
        record,
    }
}

/// The honest accelerator, for driving a session to its end.
fn accelerate(f: &Fixture, layer: u32, input: &Payload) -> Option<Payload> {
    let l = f.layers.get(layer as usize)?;
    let w = f.weights.get(layer as usize)?;
    Some(match (input, w) {
        (Payload::F32(x), PublicWeight::F32(w)) => {
            Payload::F32(shadownet_kernels::eval("l", &l.kind.op(), &[x, w]).ok()?.remove(0))
        }
        (Payload::Ring(x), PublicWeight::I32(w)) => Payload::Ring(ring(&l.kind, x, w, &l.output_shape)?),
        _ => return None,
    })
}

fn ring(kind: &LinearKind, x: &RingTensor, w: &IntTensor, out: &[usize]) -> Option<RingTensor> {
    if x.data.len() != x.shape.iter().product::<usize>() {
        return None;
    }
    Some(match kind {
        LinearKind::Conv(c) => shadownet_kernels::ring::conv2d(x, w, c, out),
        LinearKind::ConvTranspose(c) => shadownet_kernels::ring::conv_transpose2d(x, w, c, out),
        LinearKind::MatMul => shadownet_kernels::ring::matmul(x, w),
    })
}

/// Drives one inference; the host answers honestly except where `lie` says.
fn drive(core: &mut TrustedCore, f: &Fixture, mut reply: TeeToHost, lie: &mut dyn FnMut(&mut HostToTee)) {
    for _ in 0..64 {
        let mut msg = match reply {
            TeeToHost::RunLinear {
                layer,
                input,
                prefetch,
            } => {
                let Some(output) = accelerate(f, layer, &input) else {
                    return;
                };
                let chunks = prefetch
                    .iter()
                    .map(|id| match id {
                        shadownet_trusted::ChunkId::PublicWeight(l)
                        | shadownet_trusted::ChunkId::PoolBody(l) => f
                            .weights
                            .get(*l as usize)
                            .map(|w| match w {
                                PublicWeight::I32(t) => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                                PublicWeight::F32(t) => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                            })
                            .unwrap_or_default(),
                        shadownet_trusted::ChunkId::Secret(_) => Vec::new(),
                    })
                    .collect();
                HostToTee::LinearDone {
                    layer,
                    output,
                    chunks,
                }
            }
            TeeToHost::NeedChunks { ids } => HostToTee::Chunks {
                chunks: ids.iter().map(|_| Vec::new()).collect(),
            },
            _ => return,
        };
        lie(&mut msg);
        reply = core.handle(msg);
        if let TeeToHost::Failed { error } = &reply {
            check_error(error);
        }
    }
}

/// Errors carry no names: their text is one of the fixed messages.
fn check_error(e: &TeeError) {
    let text = e.to_string();
    for name in ["c1", "r1", "dw", "flat", "fc", "w1", "b1", "w3"] {
        assert!(!text.contains(&format!("'{name}'")), "an error names node {name}: {text}");
    }
}

fn open(core: &mut TrustedCore, header: &[u8], secret: &[u8]) -> TeeToHost {
    let mut sealed = SECRET_MAGIC.to_vec();
    sealed.extend_from_slice(secret);
    core.handle(HostToTee::Open {
        public_header: header.to_vec(),
        sealed,
        signature: Vec::new(),
    })
}

/// The core opening a mutated secret (past the cryptography, with the `fuzzing` feature)
/// and running an inference on it, honestly driven.
#[test]
fn package_open_and_run() {
    let fixtures = [fixture(Scheme::Hardened), fixture(Scheme::ShadowNet)];
    // Corpus entries: tag byte (which fixture, which part is mutated) ‖ bytes.
    let mut c = Vec::new();
    for (i, f) in fixtures.iter().enumerate() {
        let mut a = vec![i as u8 * 2];
        a.extend_from_slice(&f.secret_plain);
        c.push(a);
        let mut b = vec![i as u8 * 2 + 1];
        b.extend_from_slice(&f.header_region);
        c.push(b);
    }
    // Inputs that once made the core panic, kept as regressions (run first, every time).
    for e in std::fs::read_dir(here().join("regressions")).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("package_open") {
            c.push(std::fs::read(e.path()).unwrap());
        }
    }
    run("package_open", &c, 14, |d| {
        let Some((&tag, body)) = d.split_first() else { return };
        let f = &fixtures[(tag as usize / 2) % 2];
        let (header, secret) = if tag % 2 == 0 {
            (&f.header_region[..], body)
        } else {
            (body, &f.secret_plain[..])
        };
        let mut core = TrustedCore::new(&f.record, Box::new(shadownet_enclave_free_platform())).unwrap();
        let r = open(&mut core, header, secret);
        if let TeeToHost::Failed { error } = &r {
            check_error(error);
            return;
        }
        let x = Tensor::zeros(&[1, 3, 6, 6]);
        let r = core.handle(HostToTee::Begin {
            inputs: vec![x],
            pool_entry: None,
            allow_slow_masks: true,
        });
        drive(&mut core, f, r, &mut |_| {});
    });
}

/// Random message sequences against an opened core: mutations of valid messages' bytes,
/// decoded and handled in order. No panic, no secret name in any error.
#[test]
fn session_messages() {
    let f = fixture(Scheme::Hardened);
    let x = Tensor::zeros(&[1, 3, 6, 6]);
    let valid: Vec<HostToTee> = vec![
        HostToTee::Begin {
            inputs: vec![x.clone()],
            pool_entry: None,
            allow_slow_masks: true,
        },
        HostToTee::Begin {
            inputs: vec![x],
            pool_entry: Some(PoolEntryRef {
                prefix: vec![0; 32],
                header: vec![0; 64],
            }),
            allow_slow_masks: false,
        },
        HostToTee::LinearDone {
            layer: 0,
            output: Payload::Ring(RingTensor::zeros(&f.layers[0].output_shape)),
            chunks: vec![vec![0; 8]],
        },
        HostToTee::Chunks {
            chunks: vec![vec![1, 2, 3]],
        },
        HostToTee::Precompute { count: 1 },
        HostToTee::Continue,
    ];
    let c: Vec<Vec<u8>> = valid
        .iter()
        .map(|m| postcard::to_allocvec(m).unwrap())
        .collect();
    run("session_messages", &c, 15, |d| {
        let mut core = TrustedCore::new(&f.record, Box::new(shadownet_enclave_free_platform())).unwrap();
        let _ = open(&mut core, &f.header_region, &f.secret_plain);
        // The input holds several messages: split at a few points.
        let cuts = [0, d.len() / 3, 2 * d.len() / 3, d.len()];
        for w in cuts.windows(2) {
            if let Ok(msg) = postcard::from_bytes::<HostToTee>(&d[w[0]..w[1]]) {
                let r = core.handle(msg);
                if let TeeToHost::Failed { error } = &r {
                    check_error(error);
                } else {
                    drive(&mut core, &f, r, &mut |_| {});
                }
            }
        }
    });
}

/// The host-side decoders of package files and pool entries.
#[test]
fn package_files() {
    let f = fixture(Scheme::Hardened);
    let mut public = f.header_region.clone();
    for w in &f.weights {
        if let PublicWeight::I32(t) = w {
            public.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    let chunks = format::encode_chunks(&[vec![1; 20], vec![2; 7]]);
    let sig = format::SignatureFile {
        vendor: [3; 32],
        signature: [4; 64],
    }
    .encode();
    let prefix = shadownet_trusted::pool::prefix(7, &[1; 16]).to_vec();
    run("package_files", &[public, chunks, sig, prefix], 16, |d| {
        if let Ok(p) = format::split_public(d) {
            for l in &p.header.layers {
                if let Ok(b) = format::weight_blob(p.weights, l) {
                    let _ = format::decode_weight(l, b);
                }
            }
        }
        let _ = format::chunk_table(d);
        let _ = format::SignatureFile::decode(d);
        let _ = shadownet_trusted::pool::read_prefix(d);
        let _ = shadownet_trusted::pool::open_header(&[0; 32], 7, &[1; 16], d);
    });
}

/// In-memory monotonic counters (the enclave crate's platform is not a dependency here).
fn shadownet_enclave_free_platform() -> Counters {
    Counters::default()
}

#[derive(Default)]
struct Counters(Vec<([u8; 32], shadownet_trusted::Counter)>);

impl shadownet_trusted::Platform for Counters {
    fn random(&mut self, buf: &mut [u8]) -> Result<(), shadownet_trusted::PlatformError> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        Ok(())
    }
    fn read_counter(&mut self, name: &[u8; 32]) -> Result<shadownet_trusted::Counter, shadownet_trusted::PlatformError> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .ok_or(shadownet_trusted::PlatformError::NotFound)
    }
    fn create_counter(&mut self, name: &[u8; 32], epoch: [u8; 16]) -> Result<(), shadownet_trusted::PlatformError> {
        self.0.push((*name, shadownet_trusted::Counter { epoch, value: 0 }));
        Ok(())
    }
    fn advance_counter(&mut self, name: &[u8; 32], value: u64) -> Result<(), shadownet_trusted::PlatformError> {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) if value > c.value => {
                c.value = value;
                Ok(())
            }
            _ => Err(shadownet_trusted::PlatformError::NotMonotonic),
        }
    }
}
