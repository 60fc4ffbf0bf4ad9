use shadownet::secure::{self, EnclaveMode};
use shadownet_protect::Options;
use shadownet_trusted::Scheme;
mod common;
use common::{case, tmpdir};

#[test]
#[ignore]
fn prof() {
    let name = std::env::var("SN_MODEL").unwrap_or("mobilenet_v1".into());
    let runs: usize = std::env::var("SN_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let secure_on = std::env::var("SN_PLAIN").is_err();
    let (g, mut xs) = case(&name);
    if std::env::var("SN_NOISE").is_ok() {
        let mut st = 12345u64;
        for t in &mut xs {
            for v in &mut t.data {
                st = st
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u1 = ((st >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                st = st
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u2 = (st >> 11) as f64 / (1u64 << 53) as f64;
                *v = ((-2.0 * u1.ln()).sqrt() * (6.283185307179586 * u2).cos()) as f32;
            }
        }
    }
    let dir = tmpdir("prof");
    let (sk, pk) = shadownet::keys::keygen(&dir.join("keys"), false).unwrap();
    let pub_key = shadownet::keys::read_public_key(&pk).unwrap();
    let pkg = dir.join("pkg");
    let o = Options {
        scheme: Scheme::ShadowNet,
        seed: Some(1),
        ..Default::default()
    };
    secure::convert_to_dir(&g, &pub_key, &pkg, &o, false).unwrap();
    let mut sm = secure::open_cpu(&pkg, &sk, EnclaveMode::Inproc).unwrap();
    let mut other = if std::env::var("SN_OTHER").is_ok() {
        let pkg2 = dir.join("pkg2");
        let o2 = Options {
            scheme: Scheme::Hardened,
            seed: Some(1),
            ..Default::default()
        };
        secure::convert_to_dir(&g, &pub_key, &pkg2, &o2, false).unwrap();
        let mut sm2 = secure::open_cpu(&pkg2, &sk, EnclaveMode::Inproc).unwrap();
        sm2.precompute(runs, &mut |_, _| {}).unwrap();
        Some(sm2)
    } else {
        None
    };
    let mut ts = vec![];
    let mut tp = vec![];
    let mut ta = vec![];
    for _ in 0..runs {
        if let Some(m) = other.as_mut() {
            m.infer(xs.clone()).unwrap();
        }
        if std::env::var("SN_BENCHORDER").is_ok() {
            shadownet_kernels::run_graph(&g, &xs).unwrap();
            let t = std::time::Instant::now();
            shadownet_kernels::run_graph(&g, &xs).unwrap();
            tp.push(t.elapsed().as_secs_f64() * 1e3);
            sm.infer(xs.clone()).unwrap();
            let x2 = xs.clone();
            let t = std::time::Instant::now();
            sm.infer(x2).unwrap();
            ts.push(t.elapsed().as_secs_f64() * 1e3);
            ta.push(sm.last_accel_time.as_secs_f64() * 1e3);
            continue;
        }
        if std::env::var("SN_SETTLE").is_ok() {
            sm.infer(xs.clone()).unwrap();
        }
        let t = std::time::Instant::now();
        if secure_on {
            sm.infer(xs.clone()).unwrap();
        }
        ts.push(t.elapsed().as_secs_f64() * 1e3);
        ta.push(sm.last_accel_time.as_secs_f64() * 1e3);
        let t = std::time::Instant::now();
        shadownet_kernels::run_graph(&g, &xs).unwrap();
        tp.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ta.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!("accel median {:.3}", ta[runs / 2]);
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    tp.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "RESULT {name} secure {:.2} plain {:.2} ratio {:.3}",
        ts[runs / 2],
        tp[runs / 2],
        ts[runs / 2] / tp[runs / 2]
    );
}

#[test]
#[ignore]
fn layers() {
    use shadownet_ir::Tensor;
    let name = std::env::var("SN_MODEL").unwrap_or("mobilenet_v1".into());
    let (g, xs) = case(&name);
    let o = Options {
        scheme: Scheme::ShadowNet,
        seed: Some(1),
        ..Default::default()
    };
    let c = shadownet_protect::convert(&g, &o, &mut |_, _| {}).unwrap();
    let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
    for (&i, t) in g.inputs.iter().zip(&xs) {
        vals[i] = Some(t.clone());
    }
    shadownet_kernels::run_graph_observed(&g, &xs, |k, outs| {
        for (&o, t) in g.nodes[k].outputs.iter().zip(outs) {
            vals[o] = Some((*t).clone());
        }
    })
    .unwrap();
    let (mut tp, mut ta) = (0.0, 0.0);
    for (l, sl) in c.secret.layers.iter().enumerate() {
        let n = &g.nodes[sl.node as usize];
        let pl = &c.public.layers[l];
        let ins: Vec<&Tensor> = n
            .inputs
            .iter()
            .map(|&i| g.values[i].data.as_ref().or(vals[i].as_ref()).unwrap())
            .collect();
        let time = |f: &mut dyn FnMut()| {
            for _ in 0..3 {
                f()
            }
            let t = std::time::Instant::now();
            for _ in 0..20 {
                f()
            }
            t.elapsed().as_secs_f64() * 1e3 / 20.0
        };
        let p = time(&mut || {
            shadownet_kernels::eval("p", &n.op, &ins).unwrap();
        });
        let a = time(&mut || {
            shadownet_kernels::eval("a", &pl.kind.op(), &[ins[0], &pl.weight]).unwrap();
        });
        tp += p;
        ta += a;
        eprintln!(
            "L{l} {:?} w{:?} plain {p:.3} accel {a:.3}",
            n.op.name(),
            pl.weight.shape
        );
    }
    eprintln!("RESULT plain linear {tp:.2} accel {ta:.2}");
}

#[test]
#[ignore]
fn convsizes() {
    use shadownet_ir::{Op, Tensor};
    let x = Tensor {
        shape: vec![1, 32, 32, 32],
        data: (0..32 * 1024).map(|i| (i as f32 * 0.37).sin()).collect(),
    };
    for o in [32usize, 36, 39, 40, 48, 64, 77] {
        let w = Tensor {
            shape: vec![o, 32, 3, 3],
            data: (0..o * 288).map(|i| (i as f32 * 0.11).cos()).collect(),
        };
        let c = shadownet_ir::Conv {
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let op = Op::Conv(c);
        for _ in 0..5 {
            shadownet_kernels::eval("c", &op, &[&x, &w]).unwrap();
        }
        let t = std::time::Instant::now();
        for _ in 0..50 {
            shadownet_kernels::eval("c", &op, &[&x, &w]).unwrap();
        }
        eprintln!("O={o}: {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 50.0);
    }
}
