//! Times the hardened scheme's per-layer passes on typical layer shapes, min of N runs:
//! the trusted core's masking and restoring passes, and the accelerator's ring conv,
//! against the plain f32 conv of the same layer, in CPU time (robust on a shared machine;
//! with two threads a parallel kernel's CPU time is about twice its wall time).
//! `cargo run --release --example passes`.

use shadownet_ir::{Conv, IntTensor, Tensor};
use shadownet_trusted::crypto::Keystream;
use shadownet_trusted::exact::{self, CheckVectors, Geometry};
use shadownet_trusted::format::{ExactLayer, LinearKind};

/// CPU time of this process (all threads), in ms: unlike wall time, it does not grow
/// when other processes share the cores.
fn cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

fn min_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = cpu_ms();
            f();
            cpu_ms() - t
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let runs = 30;
    for &(c, m, hw, k) in &[
        (64usize, 77usize, 32usize, 3usize),
        (16, 20, 32, 3),
        (256, 308, 14, 1),
        (32, 77, 112, 1),
    ] {
        let n_real = (m / 16) * 16 * 5 / 6;
        let conv = Conv {
            kernel: [k, k],
            stride: [1, 1],
            dilation: [1, 1],
            pads: [k / 2; 4],
            groups: 1,
        };
        let input = vec![1, c, hw, hw];
        let wshape = vec![m, c, k, k];
        let out = vec![1, m, hw, hw];
        let kind = LinearKind::Conv(conv.clone());
        let geo = Geometry::new(&kind, &input, &wshape, &out);
        let mut s = 1u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let w = IntTensor {
            shape: wshape.clone(),
            data: (0..m * c * k * k)
                .map(|_| (rnd() >> 40) as i32 - (1 << 23))
                .collect(),
        };
        let wf = Tensor {
            shape: wshape.clone(),
            data: w.data.iter().map(|&v| v as f32 * 1e-7).collect(),
        };
        let layer = ExactLayer {
            in_perm: (0..c as u32).rev().collect(),
            act_bits: 24,
            bound: 1 << 59,
            groups: (0..m / 16)
                .map(|gi| shadownet_trusted::format::MixGroup {
                    public: (0..16).map(|j| (gi * 16 + j) as u32).collect(),
                    real: (0..16)
                        .map(|j| (gi * 16 + j) as u32)
                        .filter(|&r| (r as usize) < n_real)
                        .collect(),
                    coeffs: vec![0.1; 16 * 16],
                })
                .map(|mut g| {
                    g.coeffs.truncate(g.real.len() * 16);
                    g
                })
                .collect(),
        };
        let x = Tensor {
            shape: input.clone(),
            data: (0..c * hw * hw)
                .map(|_| (rnd() % 1000) as f32 / 100.0)
                .collect(),
        };
        let key = [1u8; 32];
        let mut ks = Keystream::new(&[2u8; 32], 0, 3);
        let chk = CheckVectors::draw(&geo, &mut ks);
        let u = exact::field_elements(&mut ks, m);
        let f = exact::fold(&geo, &w, &u);
        let masked = exact::mask_input(&layer, &geo, &input, &x, &key, 0, &chk).unwrap();
        let y = shadownet_cpu::ring::conv2d(&masked.x, &w, &conv, &out);
        let corr = exact::correction(&kind, &input, &out, &w, &key, 0).unwrap();
        let expected = exact::expected_sum(&f, &masked.g);
        let real_out = vec![1, n_real, hw, hw];
        let t_mask = min_ms(runs, || {
            exact::mask_input(&layer, &geo, &input, &x, &key, 0, &chk).unwrap();
        });
        // The correction as a pool body holds it: encrypted, decrypted row by row in the pass.
        let mut sealed = corr.data.clone();
        Keystream::new(&key, 0, exact::DOMAIN_CORRECTION).xor_words(&mut sealed);
        let t_restore = min_ms(runs, || {
            exact::restore(
                &layer,
                &geo,
                0,
                bytemuck::cast_slice(&y.data),
                exact::Correction::Sealed {
                    bytes: bytemuck::cast_slice(&sealed),
                    key: &key,
                    stream: 0,
                },
                &u,
                &chk,
                expected,
                masked.scale,
                &real_out,
                None,
                None,
            )
            .unwrap();
        });
        let mut body = corr.data.clone();
        let t_decrypt = min_ms(runs, || {
            Keystream::new(&key, 0, 2).xor_words(&mut body);
        });
        let t_ring = min_ms(runs, || {
            shadownet_cpu::ring::conv2d(&masked.x, &w, &conv, &out);
        });
        let t_f32 = min_ms(runs, || {
            shadownet_cpu::eval("c", &shadownet_ir::Op::Conv(conv.clone()), &[&x, &wf]).unwrap();
        });
        println!(
            "{c:>4}->{m:<4} {k}x{k} at {hw:>3}²: f32 conv {t_f32:6.3} ms | ring conv {t_ring:6.3} ms ({:.2}x) | TEE: mask {t_mask:6.3} restore {t_restore:6.3} decrypt {t_decrypt:6.3} ms = {:.2}x the f32 conv",
            t_ring / t_f32,
            (t_mask + t_restore + t_decrypt) / t_f32
        );
    }
}
