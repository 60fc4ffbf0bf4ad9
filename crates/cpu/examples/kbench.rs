//! Quick GFLOP/s of the blocked conv kernels on model-typical shapes (one thread).
use shadownet_cpu::nchwc::conv::{Act, ConvIo, InGeom, InputKind, PackedConv, Stage};
use shadownet_cpu::nchwc::{to_blocked, to_planar, AlignedBuf, Geom, Planar};
use shadownet_ir::Conv;

/// Nanoseconds this thread has run on a CPU: robust against other jobs on a shared machine.
fn cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

fn main() {
    let shapes: &[(&str, usize, usize, usize, usize, usize, bool)] = &[
        ("planar 3x3s2 3-32 224", 3, 32, 224, 3, 2, false),
        ("planar 3x3s2 3-32 416", 3, 32, 416, 3, 2, false),
        ("planar 3x3 3-16 32", 3, 16, 32, 3, 1, false),
        ("3x3 16-16 32", 16, 16, 32, 3, 1, false),
        ("3x3 32-32 16", 32, 32, 16, 3, 1, false),
        ("3x3 64-64 8", 64, 64, 8, 3, 1, false),
        ("1x1 32-64 112", 32, 64, 112, 1, 1, false),
        ("1x1 128-128 56", 128, 128, 56, 1, 1, false),
        ("1x1 512-512 14", 512, 512, 14, 1, 1, false),
        ("1x1 1024-1024 7", 1024, 1024, 7, 1, 1, false),
        ("3x3 64-64 104", 64, 64, 104, 3, 1, false),
        ("3x3 256-512 13", 256, 512, 13, 3, 1, false),
        ("dw3x3 128 56", 128, 128, 56, 3, 1, true),
        ("dw3x3 512 14", 512, 512, 14, 3, 1, true),
        ("dw3x3 128 28", 128, 128, 28, 3, 1, true),
        ("dw3x3 32 112", 32, 32, 112, 3, 1, true),
        ("dw3x3s2 64 112", 64, 64, 112, 3, 2, true),
        ("dw3x3 256 28", 256, 256, 28, 3, 1, true),
    ];
    let filter = std::env::args().nth(1).unwrap_or_default();
    if filter == "dense" {
        return dense_bench();
    }
    for &(name, cin, cout, hw, k, s, dw) in shapes {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let c = Conv {
            kernel: [k, k],
            stride: [s, s],
            dilation: [1, 1],
            pads: [k / 2; 4],
            groups: if dw { cin } else { 1 },
        };
        let cg = if dw { 1 } else { cin };
        let w: Vec<f32> = (0..cout * cg * k * k)
            .map(|i| (i % 7) as f32 * 0.01)
            .collect();
        let x: Vec<f32> = (0..cin * hw * hw).map(|i| (i % 11) as f32 * 0.1).collect();
        let oh = (hw + 2 * (k / 2) - k) / s + 1;
        let planar = cin < 16 && !dw;
        let kind = if planar {
            InputKind::Planar
        } else {
            InputKind::Blocked
        };
        let mut p = PackedConv::new(
            &c,
            &w,
            &[cout, cg, k, k],
            None,
            cin,
            if k == 1 && s == 1 { oh * oh } else { oh },
            kind,
        )
        .unwrap();
        p.epilogue.stages.push(Stage::Act(Act::Relu));
        let ig = Geom::new([1, cin, hw, hw], k / 2);
        let og = Geom::new([1, cout, oh, oh], 1);
        let pg = Planar {
            n: 1,
            c: cin,
            h: hw,
            w: hw,
            halo: 1,
        };
        let (xin, in_geom) = if planar {
            let mut b = AlignedBuf::zeros(pg.len());
            to_planar(&x, &pg, b.as_mut_slice());
            (b, InGeom::Planar(pg))
        } else {
            let mut b = AlignedBuf::zeros(ig.len());
            to_blocked(&x, &ig, b.as_mut_slice());
            (b, InGeom::Blocked(ig))
        };
        let mut out = AlignedBuf::zeros(og.len());
        let io = ConvIo {
            inp: xin.as_slice().as_ptr(),
            in_geom,
            out: out.as_mut_slice().as_mut_ptr(),
            out_geom: og,
            res: std::ptr::null(),
            res_geom: None,
        };
        let macs = p.macs([oh, oh]) as f64;
        let reps = ((2e8 / macs) as usize).clamp(3, 5000);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = cpu_ns();
            for _ in 0..reps {
                unsafe { p.run(&io) };
            }
            best = best.min((cpu_ns() - t0) * 1e-9 / reps as f64);
        }
        // Cold: a 64 MiB sweep evicts weights and activations before every run.
        let mut junk = vec![1u8; 64 << 20];
        let mut cold = Vec::new();
        for r in 0..15 {
            for j in junk.iter_mut().step_by(64) {
                *j = j.wrapping_add(r as u8);
            }
            let t0 = cpu_ns();
            unsafe { p.run(&io) };
            cold.push((cpu_ns() - t0) * 1e-9);
        }
        cold.sort_by(f64::total_cmp);
        let c = cold[cold.len() / 2];
        println!(
            "{name:<22} {:8.1} us {:6.1} GFLOP/s   cold {:8.1} us {:6.1} GFLOP/s",
            best * 1e6,
            2.0 * macs / best / 1e9,
            c * 1e6,
            2.0 * macs / c / 1e9
        );
    }
}

fn dense_bench() {
    use shadownet_ir::{Op, Tensor};
    for &(k, n) in &[(1024usize, 1000usize), (4096, 512), (512, 512)] {
        let w = Tensor::new(
            vec![k, n],
            (0..k * n).map(|i| (i % 13) as f32 * 0.01).collect(),
        )
        .unwrap();
        let x = Tensor::new(vec![1, k], (0..k).map(|i| (i % 7) as f32 * 0.1).collect()).unwrap();
        let mut l = shadownet_cpu::PackedLayer::new(&Op::MatMul, &w, None, &[1, k]).unwrap();
        let reps = 200;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = cpu_ns();
            for _ in 0..reps {
                l.run(&x).unwrap();
            }
            best = best.min((cpu_ns() - t0) * 1e-9 / reps as f64);
        }
        // From memory: a 64 MiB sweep evicts the weights before every run.
        let mut junk = vec![1u8; 64 << 20];
        let mut cold = Vec::new();
        for r in 0..30 {
            for j in junk.iter_mut().step_by(64) {
                *j = j.wrapping_add(r as u8);
            }
            let t0 = cpu_ns();
            l.run(&x).unwrap();
            cold.push((cpu_ns() - t0) * 1e-9);
        }
        cold.sort_by(f64::total_cmp);
        let c = cold[cold.len() / 2];
        println!(
            "dense {k}x{n}  warm {:8.1} us {:6.1} GB/s  cold {:8.1} us {:6.1} GB/s",
            best * 1e6,
            (k * n * 4) as f64 / best / 1e9,
            c * 1e6,
            (k * n * 4) as f64 / c / 1e9
        );
    }
}
