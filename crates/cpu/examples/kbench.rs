//! Quick GFLOP/s of the blocked conv kernels on model-typical shapes (one thread).
use shadownet_cpu::nchwc::conv::{Act, ConvIo, InGeom, InputKind, PackedConv, Stage};
use shadownet_cpu::nchwc::{to_blocked, AlignedBuf, Geom};
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
        let mut p =
            PackedConv::new(&c, &w, &[cout, cg, k, k], None, cin, oh, InputKind::Blocked).unwrap();
        p.epilogue.stages.push(Stage::Act(Act::Relu));
        let ig = Geom::new([1, cin, hw, hw], 1);
        let og = Geom::new([1, cout, oh, oh], 1);
        let mut xin = AlignedBuf::zeros(ig.len());
        to_blocked(&x, &ig, xin.as_mut_slice());
        let mut out = AlignedBuf::zeros(og.len());
        let io = ConvIo {
            inp: xin.as_slice().as_ptr(),
            in_geom: InGeom::Blocked(ig),
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
        println!(
            "{name:<20} {:8.1} us {:7.1} GFLOP/s",
            best * 1e6,
            2.0 * macs / best / 1e9
        );
    }
}
