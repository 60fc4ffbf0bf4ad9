//! Compiled plans for plain inference: `Plan::compile(&graph)` once, `plan.run(inputs)`
//! per inference.
//!
//! Compiling decides, per value, its layout (blocked NCHWc for everything convolutions
//! touch, plain NCHW for the rest), fuses each convolution with the elementwise ops after
//! it (bias, batch norm, per-channel constants, residual add, activation), packs the
//! weights once, gives every value a place in one arena by liveness (buffers reused, no
//! allocation inside an inference except by the fallback ops) and lists the steps. Ops
//! without a fast kernel run through the portable kernels in NCHW.
use std::collections::HashMap;

use shadownet_ir::{Activation, BinaryOp, Graph, Op, Tensor, ValueId};

use crate::nchwc::conv::{Act, ConvIo, InGeom, InputKind, PackedConv, Stage};
use crate::nchwc::dense::PackedDense;
use crate::nchwc::ops::{self, CPtr, EStage, Ptr};
use crate::nchwc::{self, AlignedBuf, Geom, Planar, B};
use crate::{Error, Result};

/// A plan value: a graph value or a layout copy of one.
type V = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Fused away: never stored.
    Unset,
    Const,
    Input(usize),
    Nchw,
    Blocked,
    Planar,
}

#[derive(Clone, Debug)]
struct PVal {
    shape: Vec<usize>,
    kind: Kind,
    /// NCHW values that only reinterpret another one's buffer (Reshape, Identity).
    alias_of: Option<V>,
    /// Halo the convolutions reading this value need.
    halo: usize,
}

/// One fused elementwise stage, before it is specialised for its step.
#[derive(Clone, Debug)]
enum Fuse {
    Act(Act),
    Chan {
        op: BinaryOp,
        k: Vec<f32>,
        rev: bool,
    },
    Tensor {
        op: BinaryOp,
        v: V,
        rev: bool,
    },
    ChanTensor {
        op: BinaryOp,
        v: V,
        rev: bool,
    },
}

enum AStep {
    ToBlocked {
        src: V,
        dst: V,
    },
    ToPlanar {
        src: V,
        dst: V,
    },
    ToNchw {
        src: V,
        dst: V,
    },
    Conv {
        p: Box<PackedConv>,
        x: V,
        out: V,
        res: Option<V>,
    },
    Pool {
        x: V,
        out: V,
        pool: shadownet_ir::Pool,
        max: bool,
    },
    GlobalPool {
        x: V,
        out: V,
        max: bool,
    },
    Eltwise {
        x: V,
        out: V,
        stages: Vec<Fuse>,
    },
    Concat {
        xs: Vec<V>,
        out: V,
    },
    Slice {
        x: V,
        cb0: usize,
        out: V,
    },
    Resize {
        x: V,
        out: V,
        ymap: Vec<usize>,
        xmap: Vec<usize>,
    },
    Dense {
        d: Box<PackedDense>,
        x: V,
        m: usize,
        out: V,
    },
    Fallback {
        op: Op,
        ins: Vec<V>,
        outs: Vec<V>,
    },
}

impl AStep {
    fn reads(&self) -> Vec<V> {
        match self {
            AStep::ToBlocked { src, .. }
            | AStep::ToPlanar { src, .. }
            | AStep::ToNchw { src, .. } => {
                vec![*src]
            }
            AStep::Conv { x, res, .. } => {
                let mut r = vec![*x];
                r.extend(res);
                r
            }
            AStep::Pool { x, .. }
            | AStep::GlobalPool { x, .. }
            | AStep::Slice { x, .. }
            | AStep::Resize { x, .. }
            | AStep::Dense { x, .. } => vec![*x],
            AStep::Eltwise { x, stages, .. } => {
                let mut r = vec![*x];
                for s in stages {
                    if let Fuse::Tensor { v, .. } | Fuse::ChanTensor { v, .. } = s {
                        r.push(*v);
                    }
                }
                r
            }
            AStep::Concat { xs, .. } => xs.clone(),
            AStep::Fallback { ins, .. } => ins.clone(),
        }
    }
    fn writes(&self) -> Vec<V> {
        match self {
            AStep::ToBlocked { dst, .. }
            | AStep::ToPlanar { dst, .. }
            | AStep::ToNchw { dst, .. } => {
                vec![*dst]
            }
            AStep::Conv { out, .. }
            | AStep::Pool { out, .. }
            | AStep::GlobalPool { out, .. }
            | AStep::Eltwise { out, .. }
            | AStep::Concat { out, .. }
            | AStep::Slice { out, .. }
            | AStep::Resize { out, .. }
            | AStep::Dense { out, .. } => vec![*out],
            AStep::Fallback { outs, .. } => outs.clone(),
        }
    }
}

/// Where a value's data is at run time.
#[derive(Clone, Copy, Debug)]
enum Src {
    Arena(usize),
    Input(usize),
    Const(usize),
}

enum Step {
    ToBlocked {
        src: Src,
        shape: [usize; 4],
        dst: usize,
        g: Geom,
    },
    ToPlanar {
        src: Src,
        dst: usize,
        p: Planar,
    },
    ToNchw {
        src: usize,
        g: Geom,
        dst: usize,
    },
    Conv {
        p: Box<PackedConv>,
        inp: usize,
        ing: InGeom,
        out: usize,
        og: Geom,
        res: Option<(usize, Geom)>,
    },
    Pool {
        x: usize,
        xg: Geom,
        out: usize,
        og: Geom,
        pool: shadownet_ir::Pool,
        max: bool,
    },
    GlobalPool {
        x: usize,
        xg: Geom,
        out: usize,
        og: Geom,
        max: bool,
    },
    /// Tensor operands' pointers already point into the arena.
    Eltwise {
        x: usize,
        xg: Geom,
        out: usize,
        og: Geom,
        stages: Vec<EStage>,
    },
    /// The inputs to copy (the others were written in place) and their block offsets.
    Concat {
        parts: Vec<(usize, Geom, usize)>,
        out: usize,
        og: Geom,
    },
    Slice {
        x: usize,
        xg: Geom,
        cb0: usize,
        out: usize,
        og: Geom,
    },
    Resize {
        x: usize,
        xg: Geom,
        out: usize,
        og: Geom,
        ymap: Vec<usize>,
        xmap: Vec<usize>,
    },
    Dense {
        d: Box<PackedDense>,
        x: Src,
        m: usize,
        out: usize,
    },
    Fallback {
        op: Op,
        ins: Vec<(Src, Vec<usize>)>,
        outs: Vec<(usize, Vec<usize>)>,
    },
}

/// A graph compiled for the host CPU: packed weights, fused steps and one arena.
pub struct Plan {
    steps: Vec<Step>,
    names: Vec<String>,
    arena: AlignedBuf,
    /// The arena's first float: every step addresses the arena through this pointer.
    base: *mut f32,
    consts: Vec<Tensor>,
    inputs: Vec<(String, Vec<usize>)>,
    outputs: Vec<(Src, OutLayout, Vec<usize>)>,
    macs: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
enum OutLayout {
    Nchw,
    Blocked(Geom),
}

/// Per-step wall time of one profiled run.
#[derive(Clone, Debug)]
pub struct StepTime {
    /// The graph nodes the step covers, joined with '+'.
    pub name: String,
    pub ms: f64,
    pub macs: u64,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Plan({} steps, arena {} floats)",
            self.steps.len(),
            self.arena.len()
        )
    }
}

impl Plan {
    /// Compiles `g` for this CPU. Weights are packed here, once.
    pub fn compile(g: &Graph) -> Result<Plan> {
        let mut b = Builder::new(g);
        b.build()?;
        b.finish()
    }

    /// Number of steps (fused ops plus layout changes).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// What every step covers: the graph nodes it fuses (joined with '+', with the
    /// fused activations), or the layout change it makes.
    pub fn step_names(&self) -> &[String] {
        &self.names
    }

    /// Bytes of the activation arena.
    pub fn arena_bytes(&self) -> usize {
        4 * self.arena.len()
    }

    /// Runs one inference on `inputs` (in graph-input order).
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.run_inner(inputs, None)
    }

    /// Like [`Plan::run`], also timing every step.
    pub fn run_profiled(&mut self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<StepTime>)> {
        let mut times = Vec::with_capacity(self.steps.len());
        let out = self.run_inner(inputs, Some(&mut times))?;
        let prof = times
            .into_iter()
            .zip(&self.names)
            .zip(&self.macs)
            .map(|((ms, name), &macs)| StepTime {
                name: name.clone(),
                ms,
                macs,
            })
            .collect();
        Ok((out, prof))
    }

    fn run_inner(
        &mut self,
        inputs: &[Tensor],
        mut times: Option<&mut Vec<f64>>,
    ) -> Result<Vec<Tensor>> {
        if inputs.len() != self.inputs.len() {
            let (name, shape) = self
                .inputs
                .get(inputs.len())
                .or(self.inputs.first())
                .cloned()
                .unwrap_or_default();
            return Err(Error::GraphInput {
                name,
                expected: shape,
                got: None,
            });
        }
        for ((name, shape), t) in self.inputs.iter().zip(inputs) {
            if &t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
                return Err(Error::GraphInput {
                    name: name.clone(),
                    expected: shape.clone(),
                    got: Some(t.shape.clone()),
                });
            }
        }
        let threads = crate::threads();
        let base = self.base;
        let steps = &self.steps;
        let consts = &self.consts;
        let mut result = Ok(());
        let outputs = &self.outputs;
        let arena_len = self.arena.len();
        let mut outs = Vec::with_capacity(outputs.len());
        crate::team::with_team(threads, || {
            for s in steps {
                let t0 = times.as_ref().map(|_| std::time::Instant::now());
                // SAFETY: the offsets were laid out by `finish` inside the arena, with
                // every step's outputs disjoint from its inputs (or equal for in-place
                // elementwise steps), and inputs checked against the graph's shapes above.
                if let Err(e) = unsafe { exec(s, base, inputs, consts) } {
                    result = Err(e);
                    return;
                }
                if let (Some(t), Some(t0)) = (times.as_mut(), t0) {
                    t.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            // The outputs leave the arena while the team is still up: a blocked output's
            // reorder runs on every thread.
            // SAFETY: `base` spans the arena, and no step runs any more.
            let arena = unsafe { std::slice::from_raw_parts(base, arena_len) };
            for (src, layout, shape) in outputs {
                let n: usize = shape.iter().product();
                let data = match (src, layout) {
                    (Src::Arena(o), OutLayout::Blocked(g)) => {
                        let mut d = vec![0f32; n];
                        nchwc::from_blocked(&arena[*o..*o + g.len()], g, &mut d);
                        d
                    }
                    (Src::Arena(o), OutLayout::Nchw) => arena[*o..*o + n].to_vec(),
                    (Src::Input(i), _) => inputs[*i].data.clone(),
                    (Src::Const(c), _) => consts[*c].data.clone(),
                };
                outs.push(Tensor {
                    shape: shape.clone(),
                    data,
                });
            }
        });
        result?;
        Ok(outs)
    }
}

unsafe fn src_ptr(s: Src, base: *mut f32, inputs: &[Tensor], consts: &[Tensor]) -> *const f32 {
    match s {
        Src::Arena(o) => base.add(o),
        Src::Input(i) => inputs[i].data.as_ptr(),
        Src::Const(c) => consts[c].data.as_ptr(),
    }
}

/// Runs one step.
///
/// # Safety
/// `base` is the plan's arena and the step was laid out for it.
unsafe fn exec(s: &Step, base: *mut f32, inputs: &[Tensor], consts: &[Tensor]) -> Result<()> {
    let at = |o: usize| base.add(o);
    match s {
        Step::ToBlocked { src, shape, dst, g } => {
            let n: usize = shape.iter().product();
            let x = std::slice::from_raw_parts(src_ptr(*src, base, inputs, consts), n);
            nchwc::to_blocked(x, g, std::slice::from_raw_parts_mut(at(*dst), g.len()));
        }
        Step::ToPlanar { src, dst, p } => {
            let n = p.n * p.c * p.h * p.w;
            let x = std::slice::from_raw_parts(src_ptr(*src, base, inputs, consts), n);
            nchwc::to_planar(x, p, std::slice::from_raw_parts_mut(at(*dst), p.len()));
        }
        Step::ToNchw { src, g, dst } => {
            let n = g.n * g.c * g.h * g.w;
            nchwc::from_blocked(
                std::slice::from_raw_parts(at(*src), g.len()),
                g,
                std::slice::from_raw_parts_mut(at(*dst), n),
            );
        }
        Step::Conv {
            p,
            inp,
            ing,
            out,
            og,
            res,
        } => {
            let io = ConvIo {
                inp: at(*inp),
                in_geom: *ing,
                out: at(*out),
                out_geom: *og,
                res: res.map_or(std::ptr::null(), |(o, _)| at(o) as *const f32),
                res_geom: res.map(|(_, g)| g),
            };
            p.run(&io);
        }
        Step::Pool {
            x,
            xg,
            out,
            og,
            pool,
            max,
        } => ops::pool(CPtr(at(*x)), xg, Ptr(at(*out)), og, pool, *max),
        Step::GlobalPool {
            x,
            xg,
            out,
            og,
            max,
        } => ops::global_pool(CPtr(at(*x)), xg, Ptr(at(*out)), og, *max),
        Step::Eltwise {
            x,
            xg,
            out,
            og,
            stages,
        } => ops::eltwise(CPtr(at(*x)), xg, Ptr(at(*out)), og, stages),
        Step::Concat { parts, out, og } => {
            for (o, g, cb0) in parts {
                ops::concat_part(CPtr(at(*o)), g, Ptr(at(*out)), og, *cb0);
            }
        }
        Step::Slice {
            x,
            xg,
            cb0,
            out,
            og,
        } => ops::channel_slice(CPtr(at(*x)), xg, *cb0, Ptr(at(*out)), og),
        Step::Resize {
            x,
            xg,
            out,
            og,
            ymap,
            xmap,
        } => ops::resize_nearest(CPtr(at(*x)), xg, Ptr(at(*out)), og, ymap, xmap),
        Step::Dense { d, x, m, out } => {
            d.run(CPtr(src_ptr(*x, base, inputs, consts)), *m, Ptr(at(*out)))
        }
        Step::Fallback { op, ins, outs } => {
            let tensors: Vec<Tensor> = ins
                .iter()
                .map(|(s, shape)| {
                    let n: usize = shape.iter().product();
                    Tensor {
                        shape: shape.clone(),
                        data: std::slice::from_raw_parts(src_ptr(*s, base, inputs, consts), n)
                            .to_vec(),
                    }
                })
                .collect();
            let refs: Vec<&Tensor> = tensors.iter().collect();
            let shapes: Vec<Vec<usize>> = outs.iter().map(|(_, s)| s.clone()).collect();
            let ys = crate::eval_unchecked(op, &refs, &shapes)?;
            for ((o, _), y) in outs.iter().zip(ys) {
                std::ptr::copy_nonoverlapping(y.data.as_ptr(), at(*o), y.data.len());
            }
        }
    }
    Ok(())
}

// SAFETY: a plan owns its arena and packed weights; `run` takes `&mut self`.
unsafe impl Send for Plan {}

struct Builder<'g> {
    g: &'g Graph,
    vals: Vec<PVal>,
    steps: Vec<AStep>,
    names: Vec<String>,
    macs: Vec<u64>,
    consumers: Vec<Vec<usize>>,
    /// Node producing each graph value.
    producer: Vec<Option<usize>>,
    absorbed: Vec<bool>,
    blocked_copy: HashMap<V, V>,
    planar_copy: HashMap<V, V>,
    nchw_copy: HashMap<V, V>,
    is_output: Vec<bool>,
    /// Nodes the last `absorb` fused, in order (they name the step).
    chain: Vec<usize>,
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

impl<'g> Builder<'g> {
    fn new(g: &'g Graph) -> Self {
        let nv = g.values.len();
        let mut consumers = vec![Vec::new(); nv];
        let mut producer = vec![None; nv];
        for (k, n) in g.nodes.iter().enumerate() {
            for &i in &n.inputs {
                if !consumers[i].contains(&k) {
                    consumers[i].push(k);
                }
            }
            for &o in &n.outputs {
                producer[o] = Some(k);
            }
        }
        let mut is_output = vec![false; nv];
        for &o in &g.outputs {
            is_output[o] = true;
        }
        let vals = g
            .values
            .iter()
            .map(|v| PVal {
                shape: v.shape.clone(),
                kind: if v.data.is_some() {
                    Kind::Const
                } else {
                    Kind::Unset
                },
                alias_of: None,
                halo: 0,
            })
            .collect();
        let mut b = Builder {
            g,
            vals,
            steps: Vec::new(),
            names: Vec::new(),
            macs: Vec::new(),
            consumers,
            producer,
            absorbed: vec![false; g.nodes.len()],
            blocked_copy: HashMap::new(),
            planar_copy: HashMap::new(),
            nchw_copy: HashMap::new(),
            is_output,
            chain: Vec::new(),
        };
        for (i, &v) in g.inputs.iter().enumerate() {
            b.vals[v].kind = Kind::Input(i);
        }
        b
    }

    fn push(&mut self, s: AStep, name: String, macs: u64) {
        self.steps.push(s);
        self.names.push(name);
        self.macs.push(macs);
    }

    fn new_val(&mut self, shape: Vec<usize>, kind: Kind) -> V {
        self.vals.push(PVal {
            shape,
            kind,
            alias_of: None,
            halo: 0,
        });
        self.vals.len() - 1
    }

    fn konst(&self, v: V) -> Option<&'g Tensor> {
        if v < self.g.values.len() {
            self.g.values[v].data.as_ref()
        } else {
            None
        }
    }

    fn is_act(&self, v: V) -> bool {
        !matches!(self.vals[v].kind, Kind::Const | Kind::Unset)
    }

    /// The value in blocked layout (a copy made once if needed); `None` unless 4-D data.
    fn as_blocked(&mut self, v: V) -> Option<V> {
        let pv = &self.vals[v];
        if pv.shape.len() != 4 {
            return None;
        }
        match pv.kind {
            Kind::Blocked => Some(v),
            Kind::Nchw | Kind::Input(_) => {
                if let Some(&c) = self.blocked_copy.get(&v) {
                    return Some(c);
                }
                let c = self.new_val(pv.shape.clone(), Kind::Blocked);
                self.push(
                    AStep::ToBlocked { src: v, dst: c },
                    format!("to_nchwc({})", self.name(v)),
                    0,
                );
                self.blocked_copy.insert(v, c);
                Some(c)
            }
            _ => None,
        }
    }

    fn as_planar(&mut self, v: V) -> Option<V> {
        let pv = &self.vals[v];
        if pv.shape.len() != 4 || !matches!(pv.kind, Kind::Nchw | Kind::Input(_)) {
            return None;
        }
        if let Some(&c) = self.planar_copy.get(&v) {
            return Some(c);
        }
        let c = self.new_val(pv.shape.clone(), Kind::Planar);
        self.push(
            AStep::ToPlanar { src: v, dst: c },
            format!("to_planar({})", self.name(v)),
            0,
        );
        self.planar_copy.insert(v, c);
        Some(c)
    }

    /// The value in NCHW (a copy made once for blocked values).
    fn as_nchw(&mut self, v: V) -> V {
        if self.vals[v].kind != Kind::Blocked {
            return v;
        }
        if let Some(&c) = self.nchw_copy.get(&v) {
            return c;
        }
        let c = self.new_val(self.vals[v].shape.clone(), Kind::Nchw);
        self.push(
            AStep::ToNchw { src: v, dst: c },
            format!("to_nchw({})", self.name(v)),
            0,
        );
        self.nchw_copy.insert(v, c);
        c
    }

    fn name(&self, v: V) -> String {
        if v < self.g.values.len() {
            self.g.values[v].name.clone()
        } else {
            format!("%{v}")
        }
    }

    fn build(&mut self) -> Result<()> {
        let g = self.g;
        for k in 0..g.nodes.len() {
            if self.absorbed[k] {
                continue;
            }
            let node = &g.nodes[k];
            let handled = match &node.op {
                Op::Conv(_) => self.try_conv(k)?,
                Op::MatMul => self.try_dense(k),
                Op::MaxPool(p) | Op::AvgPool(p) => {
                    let x = node.inputs[0];
                    if self.vals[x].kind == Kind::Blocked {
                        let out = node.outputs[0];
                        self.vals[out].kind = Kind::Blocked;
                        let max = matches!(node.op, Op::MaxPool(_));
                        self.push(
                            AStep::Pool {
                                x,
                                out,
                                pool: p.clone(),
                                max,
                            },
                            node.name.clone(),
                            0,
                        );
                        true
                    } else {
                        false
                    }
                }
                Op::GlobalAvgPool | Op::GlobalMaxPool => {
                    let x = node.inputs[0];
                    if self.vals[x].kind == Kind::Blocked {
                        let out = node.outputs[0];
                        self.vals[out].kind = Kind::Blocked;
                        let max = matches!(node.op, Op::GlobalMaxPool);
                        self.push(AStep::GlobalPool { x, out, max }, node.name.clone(), 0);
                        true
                    } else {
                        false
                    }
                }
                Op::Act(_) | Op::Binary(_) | Op::BatchNorm { .. } => self.try_eltwise(k),
                Op::Concat { axis: 1 } => self.try_concat(k),
                Op::Split { axis: 1, sizes } => self.try_split(k, sizes),
                Op::Resize(r) => self.try_resize(k, r),
                Op::Reshape { .. } | Op::Identity => {
                    let x = self.as_nchw(node.inputs[0]);
                    let out = node.outputs[0];
                    match self.vals[x].kind {
                        Kind::Const | Kind::Unset => false,
                        _ => {
                            self.vals[out].kind = self.vals[x].kind;
                            self.vals[out].alias_of = Some(self.vals[x].alias_of.unwrap_or(x));
                            true
                        }
                    }
                }
                _ => false,
            };
            if !handled {
                self.fallback(k);
            }
        }
        Ok(())
    }

    fn fallback(&mut self, k: usize) {
        let node = &self.g.nodes[k];
        let ins: Vec<V> = node.inputs.iter().map(|&i| self.as_nchw(i)).collect();
        for &o in &node.outputs {
            self.vals[o].kind = Kind::Nchw;
        }
        let macs = self.g.macs(node);
        self.push(
            AStep::Fallback {
                op: node.op.clone(),
                ins,
                outs: node.outputs.clone(),
            },
            node.name.clone(),
            macs,
        );
    }

    /// Per-channel constants of `t` for an [N, C, H, W] (`axis` = 1) or [M, N] (`axis` =
    /// last) output: a scalar, or a tensor whose only non-1 dim is that axis.
    fn per_channel(t: &Tensor, out: &[usize], axis: usize) -> Option<Vec<f32>> {
        let c = out[axis];
        if t.data.len() == 1 {
            return Some(vec![t.data[0]; c]);
        }
        if t.shape.len() > out.len() || t.data.len() != c {
            return None;
        }
        let off = out.len() - t.shape.len();
        if axis < off {
            return None;
        }
        for (d, &s) in t.shape.iter().enumerate() {
            let want = if d + off == axis { c } else { 1 };
            if s != want {
                return None;
            }
        }
        Some(t.data.clone())
    }

    /// Follows `cur` forward through single-consumer elementwise nodes that `accept`
    /// takes, marking them absorbed. Returns the last value of the chain.
    fn absorb(
        &mut self,
        mut cur: ValueId,
        before: usize,
        axis: usize,
        stages: &mut Vec<Fuse>,
        accept: &dyn Fn(&Fuse, &[Fuse]) -> bool,
    ) -> ValueId {
        let g = self.g;
        loop {
            if self.is_output[cur] {
                return cur;
            }
            let cons = &self.consumers[cur];
            if cons.len() == 2 {
                if let Some((act, end, nodes)) = self.hard_swish(cur) {
                    let f = Fuse::Act(act);
                    if accept(&f, stages) {
                        stages.push(f);
                        for n in nodes {
                            self.absorbed[n] = true;
                            self.chain.push(n);
                        }
                        cur = end;
                        continue;
                    }
                }
                return cur;
            }
            if cons.len() != 1 {
                return cur;
            }
            let k = cons[0];
            let node = &g.nodes[k];
            let shape = &self.vals[cur].shape;
            if node.outputs.len() != 1 || &self.vals[node.outputs[0]].shape != shape {
                return cur;
            }
            let f = match &node.op {
                Op::Act(a) => Fuse::Act(Act::of(*a)),
                Op::BatchNorm { epsilon } if node.inputs[0] == cur && axis == 1 => {
                    let p: Option<Vec<&Tensor>> =
                        node.inputs[1..5].iter().map(|&i| self.konst(i)).collect();
                    let Some(p) = p else { return cur };
                    if p.iter().any(|t| t.data.len() != shape[1]) {
                        return cur;
                    }
                    let (a, b) = shadownet_kernels::norm::batch_norm_coeffs(
                        [p[0], p[1], p[2], p[3]],
                        *epsilon,
                    );
                    let f1 = Fuse::Chan {
                        op: BinaryOp::Mul,
                        k: a,
                        rev: false,
                    };
                    let f2 = Fuse::Chan {
                        op: BinaryOp::Add,
                        k: b,
                        rev: false,
                    };
                    if !accept(&f1, stages) {
                        return cur;
                    }
                    stages.push(f1);
                    if !accept(&f2, stages) {
                        // Undo: both halves or neither.
                        stages.pop();
                        return cur;
                    }
                    stages.push(f2);
                    self.absorbed[k] = true;
                    self.chain.push(k);
                    cur = node.outputs[0];
                    continue;
                }
                Op::Binary(op) if node.inputs.len() == 2 => {
                    let (a, b) = (node.inputs[0], node.inputs[1]);
                    let rev = b == cur;
                    let other = if rev { a } else { b };
                    if other == cur {
                        return cur;
                    }
                    if let Some(t) = self.konst(other) {
                        match Self::per_channel(t, shape, axis) {
                            Some(k) => Fuse::Chan { op: *op, k, rev },
                            None => return cur,
                        }
                    } else if self.vals[other].shape == *shape
                        && self.producer[other].is_none_or(|p| p < before)
                        && self.is_act(other)
                    {
                        Fuse::Tensor {
                            op: *op,
                            v: other,
                            rev,
                        }
                    } else if axis == 1
                        && self.producer[other].is_none_or(|p| p < before)
                        && self.is_act(other)
                        && self.vals[other].shape.len() == 4
                        && self.vals[other].shape[1] == shape[1]
                        && self.vals[other].shape[2..] == [1, 1]
                        && (self.vals[other].shape[0] == 1 || self.vals[other].shape[0] == shape[0])
                    {
                        Fuse::ChanTensor {
                            op: *op,
                            v: other,
                            rev,
                        }
                    } else {
                        return cur;
                    }
                }
                _ => return cur,
            };
            if !accept(&f, stages) {
                return cur;
            }
            stages.push(f);
            self.absorbed[k] = true;
            self.chain.push(k);
            cur = node.outputs[0];
        }
    }

    /// `x * Clip(x + a, lo, hi)` (then `/ k` or `* k`), as ONNX exporters write
    /// hard-swish: the activation, the chain's last value and its nodes.
    fn hard_swish(&self, x: ValueId) -> Option<(Act, ValueId, Vec<usize>)> {
        let g = self.g;
        let cons = &self.consumers[x];
        let scalar = |v: ValueId| {
            self.konst(v)
                .filter(|t| t.data.len() == 1)
                .map(|t| t.data[0])
        };
        let other = |n: &shadownet_ir::Node| {
            if n.inputs.len() != 2 {
                None
            } else if n.inputs[0] == x {
                Some(n.inputs[1])
            } else if n.inputs[1] == x {
                Some(n.inputs[0])
            } else {
                None
            }
        };
        let (mut add_n, mut mul_n) = (None, None);
        for &k in cons {
            match g.nodes[k].op {
                Op::Binary(BinaryOp::Add) => add_n = Some(k),
                Op::Binary(BinaryOp::Mul) => mul_n = Some(k),
                _ => return None,
            }
        }
        let (a, m) = (add_n?, mul_n?);
        let add = scalar(other(&g.nodes[a])?)?;
        let t = g.nodes[a].outputs[0];
        if self.is_output[t] || self.consumers[t].len() != 1 {
            return None;
        }
        let c = self.consumers[t][0];
        let Op::Act(Activation::Clip { min, max }) = g.nodes[c].op else {
            return None;
        };
        let u = g.nodes[c].outputs[0];
        if self.is_output[u] || self.consumers[u] != [m] || other(&g.nodes[m])? != u {
            return None;
        }
        let mut end = g.nodes[m].outputs[0];
        let mut nodes = vec![a, c, m];
        let (mut post, mut k) = (BinaryOp::Mul, 1.0);
        if !self.is_output[end] && self.consumers[end].len() == 1 {
            let d = self.consumers[end][0];
            if let Op::Binary(op @ (BinaryOp::Div | BinaryOp::Mul)) = g.nodes[d].op {
                if g.nodes[d].inputs.len() == 2 && g.nodes[d].inputs[0] == end {
                    if let Some(s) = scalar(g.nodes[d].inputs[1]) {
                        post = op;
                        k = s;
                        nodes.push(d);
                        end = g.nodes[d].outputs[0];
                    }
                }
            }
        }
        let shape = &self.vals[x].shape;
        if self.vals[end].shape != *shape {
            return None;
        }
        Some((
            Act::HardSwishGraph {
                add,
                lo: min,
                hi: max,
                post,
                k,
            },
            end,
            nodes,
        ))
    }

    /// The step name: node `k` and the nodes the last `absorb` fused into it.
    fn chain_name(&self, k: usize) -> String {
        let mut n = self.g.nodes[k].name.clone();
        for &c in &self.chain {
            n.push('+');
            n.push_str(&self.g.nodes[c].name);
        }
        n
    }

    fn try_conv(&mut self, k: usize) -> Result<bool> {
        let g = self.g;
        let node = &g.nodes[k];
        let Op::Conv(c) = &node.op else {
            return Ok(false);
        };
        let x = node.inputs[0];
        let (Some(w), bias) = (self.konst(node.inputs[1]), node.inputs.get(2)) else {
            return Ok(false);
        };
        let bias = match bias {
            Some(&b) => match self.konst(b) {
                Some(t) => Some(t.data.as_slice()),
                None => return Ok(false),
            },
            None => None,
        };
        if !self.is_act(x) || self.vals[x].shape.len() != 4 || w.shape.len() != 4 {
            return Ok(false);
        }
        let cin = self.vals[x].shape[1];
        let out0 = node.outputs[0];
        let oshape = self.vals[out0].shape.clone();
        let kind = if self.vals[x].kind == Kind::Blocked || c.groups > 1 || cin >= B {
            InputKind::Blocked
        } else {
            InputKind::Planar
        };
        // The width the tiles cover: a pointwise convolution's whole image (see `run`).
        let tile_w = if c.kernel == [1, 1] && c.stride == [1, 1] && c.pads == [0; 4] {
            oshape[2] * oshape[3]
        } else {
            oshape[3]
        };
        let Some(mut p) = PackedConv::new(c, &w.data, &w.shape, bias, cin, tile_w, kind) else {
            return Ok(false);
        };
        let xin = match kind {
            InputKind::Blocked => self.as_blocked(x),
            InputKind::Planar => self.as_planar(x),
        };
        let Some(xin) = xin else { return Ok(false) };
        let mut stages = Vec::new();
        // The conv epilogue takes activations, per-channel constants (not reversed
        // Sub/Div) and one residual add.
        let accept = |f: &Fuse, st: &[Fuse]| match f {
            Fuse::Act(_) => true,
            Fuse::Chan { op, rev, .. } => {
                matches!(
                    op,
                    BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div
                ) && (!rev || matches!(op, BinaryOp::Add | BinaryOp::Mul))
            }
            Fuse::Tensor {
                op: BinaryOp::Add, ..
            } => !st.iter().any(|s| matches!(s, Fuse::Tensor { .. })),
            _ => false,
        };
        self.chain.clear();
        let end = self.absorb(out0, k, 1, &mut stages, &accept);
        let name = self.chain_name(k);
        let mut res = None;
        let mut leading = true;
        for f in stages {
            match f {
                // Constants before anything else fold into the weights and bias.
                Fuse::Chan { op, k, .. } if leading => p.fold_channel(op, &k),
                Fuse::Chan { op, k, .. } => {
                    let mut buf = AlignedBuf::zeros(k.len().next_multiple_of(B));
                    let fill = if matches!(op, BinaryOp::Mul | BinaryOp::Div) {
                        1.0
                    } else {
                        0.0
                    };
                    buf.as_mut_slice().fill(fill);
                    buf.as_mut_slice()[..k.len()].copy_from_slice(&k);
                    p.epilogue.stages.push(Stage::Channel(op, buf));
                }
                Fuse::Act(a) => {
                    leading = false;
                    p.epilogue.stages.push(Stage::Act(a));
                }
                Fuse::Tensor { v, .. } => {
                    leading = false;
                    res = Some(v);
                    p.epilogue.stages.push(Stage::AddResidual);
                }
                Fuse::ChanTensor { .. } => unreachable!("not accepted for convolutions"),
            }
        }
        let res = match res {
            Some(v) => match self.as_blocked(v) {
                Some(b) => Some(b),
                None => {
                    return Err(Error::Unsupported {
                        node: node.name.clone(),
                        op: "residual operand",
                    })
                }
            },
            None => None,
        };
        self.vals[end].kind = Kind::Blocked;
        let macs = p.macs([oshape[2], oshape[3]]) as u64 * oshape[0] as u64;
        self.push(
            AStep::Conv {
                p: Box::new(p),
                x: xin,
                out: end,
                res,
            },
            name,
            macs,
        );
        Ok(true)
    }

    fn try_dense(&mut self, k: usize) -> bool {
        let g = self.g;
        let node = &g.nodes[k];
        let (a, bv) = (node.inputs[0], node.inputs[1]);
        let Some(w) = self.konst(bv) else {
            return false;
        };
        if w.shape.len() != 2 || !self.is_act(a) {
            return false;
        }
        let ashape = self.vals[a].shape.clone();
        if ashape.is_empty() || *ashape.last().unwrap_or(&0) != w.shape[0] {
            return false;
        }
        let out0 = node.outputs[0];
        let oshape = self.vals[out0].shape.clone();
        let (kk, n) = (w.shape[0], w.shape[1]);
        let m = numel(&ashape) / kk.max(1);
        if numel(&oshape) != m * n {
            return false;
        }
        let mut d = PackedDense::new(&w.data, kk, n);
        let mut stages = Vec::new();
        let accept = |f: &Fuse, _: &[Fuse]| matches!(f, Fuse::Act(_) | Fuse::Chan { .. });
        let axis = oshape.len() - 1;
        self.chain.clear();
        let end = self.absorb(out0, k, axis, &mut stages, &accept);
        let name = self.chain_name(k);
        for f in stages {
            match f {
                Fuse::Act(a) => d.stages.push(EStage::Act(a)),
                Fuse::Chan { op, k, rev } => d.stages.push(EStage::Channel { op, k, rev }),
                _ => unreachable!("not accepted for dense layers"),
            }
        }
        let x = self.as_nchw(a);
        self.vals[end].kind = Kind::Nchw;
        self.push(
            AStep::Dense {
                d: Box::new(d),
                x,
                m,
                out: end,
            },
            name,
            (m * kk * n) as u64,
        );
        true
    }

    fn try_eltwise(&mut self, k: usize) -> bool {
        let g = self.g;
        let node = &g.nodes[k];
        let out0 = node.outputs[0];
        let shape = self.vals[out0].shape.clone();
        if shape.len() != 4 {
            return false;
        }
        // The blocked operand that defines the output.
        let blocked_in = node
            .inputs
            .iter()
            .position(|&i| self.vals[i].kind == Kind::Blocked && self.vals[i].shape == shape);
        let Some(bi) = blocked_in else { return false };
        let x = node.inputs[bi];
        let mut stages = Vec::new();
        let first = match &node.op {
            Op::Act(a) => Fuse::Act(Act::of(*a)),
            Op::BatchNorm { epsilon } => {
                if bi != 0 {
                    return false;
                }
                let p: Option<Vec<&Tensor>> =
                    node.inputs[1..5].iter().map(|&i| self.konst(i)).collect();
                let Some(p) = p else { return false };
                if p.iter().any(|t| t.data.len() != shape[1]) {
                    return false;
                }
                let (a, b) =
                    shadownet_kernels::norm::batch_norm_coeffs([p[0], p[1], p[2], p[3]], *epsilon);
                stages.push(Fuse::Chan {
                    op: BinaryOp::Mul,
                    k: a,
                    rev: false,
                });
                Fuse::Chan {
                    op: BinaryOp::Add,
                    k: b,
                    rev: false,
                }
            }
            Op::Binary(op) if node.inputs.len() == 2 => {
                let rev = bi == 1;
                let other = node.inputs[1 - bi];
                if let Some(t) = self.konst(other) {
                    match Self::per_channel(t, &shape, 1) {
                        Some(k) => Fuse::Chan { op: *op, k, rev },
                        None => return false,
                    }
                } else if self.vals[other].shape == shape {
                    match self.as_blocked(other) {
                        Some(v) => Fuse::Tensor { op: *op, v, rev },
                        None => return false,
                    }
                } else {
                    let os = self.vals[other].shape.clone();
                    if os.len() == 4
                        && os[1] == shape[1]
                        && os[2..] == [1, 1]
                        && (os[0] == 1 || os[0] == shape[0])
                    {
                        match self.as_blocked(other) {
                            Some(v) => Fuse::ChanTensor { op: *op, v, rev },
                            None => return false,
                        }
                    } else {
                        return false;
                    }
                }
            }
            _ => return false,
        };
        stages.push(first);
        let accept = |_: &Fuse, st: &[Fuse]| st.len() < 8;
        self.chain.clear();
        let end = self.absorb(out0, k, 1, &mut stages, &accept);
        // Tensor operands absorbed later must be blocked too.
        for s in stages.iter_mut() {
            if let Fuse::Tensor { v, .. } | Fuse::ChanTensor { v, .. } = s {
                match self.as_blocked(*v) {
                    Some(b) => *v = b,
                    None => return false,
                }
            }
        }
        self.vals[end].kind = Kind::Blocked;
        let name = self.chain_name(k);
        self.push(
            AStep::Eltwise {
                x,
                out: end,
                stages,
            },
            name,
            numel(&shape) as u64,
        );
        true
    }

    fn try_concat(&mut self, k: usize) -> bool {
        let node = &self.g.nodes[k];
        let out = node.outputs[0];
        let n = node.inputs.len();
        let ok = node.inputs.iter().enumerate().all(|(i, &v)| {
            self.vals[v].shape.len() == 4
                && self.is_act(v)
                && (i + 1 == n || self.vals[v].shape[1].is_multiple_of(B))
        }) && node
            .inputs
            .iter()
            .any(|&v| self.vals[v].kind == Kind::Blocked);
        if !ok {
            return false;
        }
        let mut xs = Vec::new();
        for &v in &node.inputs {
            match self.as_blocked(v) {
                Some(b) => xs.push(b),
                None => return false,
            }
        }
        self.vals[out].kind = Kind::Blocked;
        self.push(AStep::Concat { xs, out }, node.name.clone(), 0);
        true
    }

    fn try_split(&mut self, k: usize, sizes: &[usize]) -> bool {
        let node = &self.g.nodes[k];
        let x = node.inputs[0];
        if self.vals[x].kind != Kind::Blocked
            || sizes[..sizes.len().saturating_sub(1)]
                .iter()
                .any(|s| s % B != 0)
        {
            return false;
        }
        let mut c0 = 0;
        let outs = node.outputs.clone();
        let name = node.name.clone();
        for (&o, &s) in outs.iter().zip(sizes) {
            if !self.consumers[o].is_empty() || self.is_output[o] {
                self.vals[o].kind = Kind::Blocked;
                self.push(
                    AStep::Slice {
                        x,
                        cb0: c0 / B,
                        out: o,
                    },
                    format!("{name}:{}", c0 / B),
                    0,
                );
            }
            c0 += s;
        }
        true
    }

    fn try_resize(&mut self, k: usize, r: &shadownet_ir::Resize) -> bool {
        let node = &self.g.nodes[k];
        let x = node.inputs[0];
        let xs = &self.vals[x].shape;
        if self.vals[x].kind != Kind::Blocked
            || !matches!(r.mode, shadownet_ir::ResizeMode::Nearest(_))
            || r.out_shape.len() != 4
            || r.out_shape[..2] != xs[..2]
            || r.scales[..2] != [1.0, 1.0]
        {
            return false;
        }
        // The portable kernel's own index mapping, read off by resizing index ramps.
        let map = |axis: usize| -> Option<Vec<usize>> {
            let (inl, outl) = (xs[axis], r.out_shape[axis]);
            let ramp = Tensor::new(vec![inl], (0..inl).map(|i| i as f32).collect()).ok()?;
            let rr = shadownet_ir::Resize {
                mode: r.mode,
                coord: r.coord,
                out_shape: vec![outl],
                scales: vec![r.scales[axis]],
            };
            let y = shadownet_kernels::layout::resize(&ramp, &rr);
            Some(y.data.iter().map(|&v| v as usize).collect())
        };
        let (Some(ymap), Some(xmap)) = (map(2), map(3)) else {
            return false;
        };
        let out = node.outputs[0];
        self.vals[out].kind = Kind::Blocked;
        self.push(AStep::Resize { x, out, ymap, xmap }, node.name.clone(), 0);
        true
    }

    /// Halos, in-place steps, memory layout, concrete steps.
    fn finish(mut self) -> Result<Plan> {
        let g = self.g;
        // Graph outputs computed nowhere yet (fused away cannot happen: chains stop at
        // outputs) must at least be stored somewhere.
        for &o in &g.outputs {
            if self.vals[o].kind == Kind::Unset {
                return Err(Error::Unsupported {
                    node: g.values[o].name.clone(),
                    op: "graph output never computed",
                });
            }
        }
        for s in &self.steps {
            if let AStep::Conv { p, x, .. } = s {
                let h = p.conv.pads.iter().copied().max().unwrap_or(0);
                self.vals[*x].halo = self.vals[*x].halo.max(h);
            }
        }
        let nv = self.vals.len();
        // Storage groups: values sharing a buffer.
        let mut group: Vec<usize> = (0..nv).collect();
        fn root(group: &mut [usize], mut v: usize) -> usize {
            while group[v] != v {
                group[v] = group[group[v]];
                v = group[v];
            }
            v
        }
        for v in 0..nv {
            if let Some(a) = self.vals[v].alias_of {
                let (ra, rv) = (root(&mut group, a), root(&mut group, v));
                group[rv] = ra;
            }
        }
        let nsteps = self.steps.len();
        let mut last_use = vec![0usize; nv];
        let mut def = vec![usize::MAX; nv];
        for (i, s) in self.steps.iter().enumerate() {
            for v in s.reads() {
                last_use[v] = last_use[v].max(i);
            }
            for v in s.writes() {
                def[v] = def[v].min(i);
            }
        }
        for &o in &g.outputs {
            last_use[o] = nsteps;
        }
        // Channel views: a block-aligned split's outputs are views of its input, and a
        // concat's inputs are written straight into its output, so neither copies. A
        // value joins a buffer at a block offset (`sub_cb`) only while it is alone in its
        // own group; concats are visited last to first so that nested ones compose.
        let mut sub_cb = vec![0usize; nv];
        let mut members = vec![1usize; nv];
        let mut elided = vec![false; nsteps];
        let mut copied: HashMap<usize, Vec<bool>> = HashMap::new();
        {
            let vals = &self.vals;
            let mut join = |group: &mut Vec<usize>, v: V, parent: V, cb: usize| -> bool {
                let rp = root(group, parent);
                let ok = group[v] == v
                    && members[v] == 1
                    && rp != v
                    && vals[v].kind == Kind::Blocked
                    && def[v] != usize::MAX;
                if ok {
                    group[v] = rp;
                    members[rp] += 1;
                    sub_cb[v] = sub_cb[parent] + cb;
                }
                ok
            };
            for (i, st) in self.steps.iter().enumerate().rev() {
                if let AStep::Concat { xs, out } = st {
                    let mut cb = 0;
                    let mut copy = Vec::with_capacity(xs.len());
                    for &x in xs {
                        copy.push(!join(&mut group, x, *out, cb));
                        cb += vals[x].shape[1].div_ceil(B);
                    }
                    elided[i] = !copy.iter().any(|&c| c);
                    copied.insert(i, copy);
                }
            }
            for (i, st) in self.steps.iter().enumerate() {
                if let AStep::Slice { x, cb0, out } = st {
                    elided[i] = join(&mut group, *out, *x, *cb0);
                }
            }
        }
        // Elementwise steps whose input dies there (and is not also a tensor operand of
        // the same step) run in place.
        for (i, s) in self.steps.iter().enumerate() {
            if let AStep::Eltwise { x, out, stages } = s {
                if members[root(&mut group, *x)] != 1 || members[root(&mut group, *out)] != 1 {
                    continue;
                }
                let rx = root(&mut group, *x);
                let members_last = (0..nv)
                    .filter(|&v| root(&mut group, v) == rx)
                    .map(|v| last_use[v])
                    .max()
                    .unwrap_or(0);
                let operand = stages.iter().any(|f| match f {
                    Fuse::Tensor { v, .. } | Fuse::ChanTensor { v, .. } => {
                        let rv = root(&mut group, *v);
                        rv == rx
                    }
                    _ => false,
                });
                if members_last == i
                    && !operand
                    && self.vals[*x].kind == Kind::Blocked
                    && self.vals[*x].shape == self.vals[*out].shape
                {
                    let ro = root(&mut group, *out);
                    group[ro] = rx;
                }
            }
        }
        let roots: Vec<usize> = (0..nv).map(|v| root(&mut group, v)).collect();
        let mut halo = vec![0usize; nv];
        for v in 0..nv {
            halo[roots[v]] = halo[roots[v]].max(self.vals[v].halo);
        }
        // A view takes the halo and the image stride of its whole buffer.
        let geom = |v: V, vals: &[PVal]| -> Geom {
            let s = &vals[v].shape;
            let r = &vals[roots[v]].shape;
            let mut g = Geom::new([s[0], s[1], s[2], s[3]], halo[roots[v]]);
            if r.len() == 4 {
                g.image_stride = Geom::new([r[0], r[1], r[2], r[3]], halo[roots[v]]).image_stride;
            }
            g
        };
        // Floats from the start of its group's buffer to a value.
        let sub = |v: V, vals: &[PVal]| -> usize {
            if sub_cb[v] == 0 {
                0
            } else {
                sub_cb[v] * geom(v, vals).block_stride()
            }
        };
        // Buffer per group: size, first definition, last use.
        let mut size = vec![0usize; nv];
        let mut first = vec![usize::MAX; nv];
        let mut last = vec![0usize; nv];
        let mut stored = vec![false; nv];
        for v in 0..nv {
            let len = match self.vals[v].kind {
                Kind::Blocked => sub(v, &self.vals) + geom(v, &self.vals).len(),
                Kind::Planar => {
                    let s = &self.vals[v].shape;
                    Planar {
                        n: s[0],
                        c: s[1],
                        h: s[2],
                        w: s[3],
                        halo: halo[roots[v]],
                    }
                    .len()
                }
                Kind::Nchw => numel(&self.vals[v].shape),
                _ => continue,
            };
            let r = roots[v];
            stored[r] = true;
            size[r] = size[r].max(len);
            if def[v] != usize::MAX {
                first[r] = first[r].min(def[v]);
            }
            last[r] = last[r]
                .max(last_use[v])
                .max(if def[v] == usize::MAX { 0 } else { def[v] });
        }
        for r in 0..nv {
            if stored[r] && first[r] == usize::MAX {
                first[r] = 0;
            }
        }
        // Greedy placement, largest first, at the lowest offset free over the lifetime.
        let mut order: Vec<usize> = (0..nv).filter(|&r| stored[r]).collect();
        order.sort_by(|&a, &b| size[b].cmp(&size[a]).then(a.cmp(&b)));
        let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // (off, len, first, last)
        let mut offset = vec![0usize; nv];
        let mut arena_len = 0;
        for &r in &order {
            let len = size[r].next_multiple_of(B);
            let mut conflicts: Vec<(usize, usize)> = placed
                .iter()
                .filter(|p| p.2 <= last[r] && first[r] <= p.3)
                .map(|p| (p.0, p.0 + p.1))
                .collect();
            conflicts.sort();
            let mut off = 0;
            for (a, b) in conflicts {
                if off + len <= a {
                    break;
                }
                off = off.max(b);
            }
            offset[r] = off;
            placed.push((off, len, first[r], last[r]));
            arena_len = arena_len.max(off + len);
        }
        let mut consts = Vec::new();
        let mut const_idx: HashMap<V, usize> = HashMap::new();
        let mut src = |v: V, vals: &[PVal]| -> Src {
            match vals[v].kind {
                Kind::Input(i) => Src::Input(i),
                Kind::Const => Src::Const(*const_idx.entry(v).or_insert_with(|| {
                    consts.push(
                        g.values[v]
                            .data
                            .clone()
                            .unwrap_or_else(|| Tensor::zeros(&[0])),
                    );
                    consts.len() - 1
                })),
                _ => Src::Arena(offset[roots[v]] + sub(v, vals)),
            }
        };
        let vals0 = &self.vals;
        let off = |v: V| offset[roots[v]] + sub(v, vals0);
        let mut arena = AlignedBuf::zeros(arena_len);
        let base = arena.as_mut_slice().as_mut_ptr();
        let ptr = |v: V| CPtr(base.wrapping_add(off(v)));
        let mut steps = Vec::with_capacity(nsteps);
        let (mut names, mut macs) = (Vec::new(), Vec::new());
        for (i, s) in std::mem::take(&mut self.steps).into_iter().enumerate() {
            if elided[i] {
                continue;
            }
            names.push(std::mem::take(&mut self.names[i]));
            macs.push(self.macs[i]);
            let vals = &self.vals;
            let shape4 = |v: V| {
                let s = &vals[v].shape;
                [s[0], s[1], s[2], s[3]]
            };
            steps.push(match s {
                AStep::ToBlocked { src: s0, dst } => Step::ToBlocked {
                    src: src(s0, vals),
                    shape: shape4(s0),
                    dst: off(dst),
                    g: geom(dst, vals),
                },
                AStep::ToPlanar { src: s0, dst } => {
                    let [n, c, h, w] = shape4(s0);
                    Step::ToPlanar {
                        src: src(s0, vals),
                        dst: off(dst),
                        p: Planar {
                            n,
                            c,
                            h,
                            w,
                            halo: halo[roots[dst]],
                        },
                    }
                }
                AStep::ToNchw { src: s0, dst } => Step::ToNchw {
                    src: off(s0),
                    g: geom(s0, vals),
                    dst: off(dst),
                },
                AStep::Conv { p, x, out, res } => {
                    let ing = match vals[x].kind {
                        Kind::Planar => {
                            let [n, c, h, w] = shape4(x);
                            InGeom::Planar(Planar {
                                n,
                                c,
                                h,
                                w,
                                halo: halo[roots[x]],
                            })
                        }
                        _ => InGeom::Blocked(geom(x, vals)),
                    };
                    Step::Conv {
                        p,
                        inp: off(x),
                        ing,
                        out: off(out),
                        og: geom(out, vals),
                        res: res.map(|r| (off(r), geom(r, vals))),
                    }
                }
                AStep::Pool { x, out, pool, max } => Step::Pool {
                    x: off(x),
                    xg: geom(x, vals),
                    out: off(out),
                    og: geom(out, vals),
                    pool,
                    max,
                },
                AStep::GlobalPool { x, out, max } => Step::GlobalPool {
                    x: off(x),
                    xg: geom(x, vals),
                    out: off(out),
                    og: geom(out, vals),
                    max,
                },
                AStep::Eltwise { x, out, stages } => {
                    let st = stages
                        .into_iter()
                        .map(|f| match f {
                            Fuse::Act(a) => EStage::Act(a),
                            Fuse::Chan { op, k, rev } => {
                                let mut kk = k;
                                let fill = if matches!(op, BinaryOp::Mul | BinaryOp::Div) {
                                    1.0
                                } else {
                                    0.0
                                };
                                kk.resize(kk.len().next_multiple_of(B), fill);
                                EStage::Channel { op, k: kk, rev }
                            }
                            Fuse::Tensor { op, v, rev } => EStage::Tensor {
                                op,
                                t: ptr(v),
                                g: geom(v, vals),
                                rev,
                            },
                            Fuse::ChanTensor { op, v, rev } => EStage::ChanTensor {
                                op,
                                t: ptr(v),
                                g: geom(v, vals),
                                rev,
                            },
                        })
                        .collect();
                    Step::Eltwise {
                        x: off(x),
                        xg: geom(x, vals),
                        out: off(out),
                        og: geom(out, vals),
                        stages: st,
                    }
                }
                AStep::Concat { xs, out } => {
                    // The inputs not already written in place, at their block offsets.
                    let copy = &copied[&i];
                    let mut parts = Vec::new();
                    let mut cb = 0;
                    for (&v, &c) in xs.iter().zip(copy) {
                        if c {
                            parts.push((off(v), geom(v, vals), cb));
                        }
                        cb += vals[v].shape[1].div_ceil(B);
                    }
                    Step::Concat {
                        parts,
                        out: off(out),
                        og: geom(out, vals),
                    }
                }
                AStep::Slice { x, cb0, out } => Step::Slice {
                    x: off(x),
                    xg: geom(x, vals),
                    cb0,
                    out: off(out),
                    og: geom(out, vals),
                },
                AStep::Resize { x, out, ymap, xmap } => Step::Resize {
                    x: off(x),
                    xg: geom(x, vals),
                    out: off(out),
                    og: geom(out, vals),
                    ymap,
                    xmap,
                },
                AStep::Dense { d, x, m, out } => Step::Dense {
                    d,
                    x: src(x, vals),
                    m,
                    out: off(out),
                },
                AStep::Fallback { op, ins, outs } => Step::Fallback {
                    op,
                    ins: ins
                        .iter()
                        .map(|&v| (src(v, vals), vals[v].shape.clone()))
                        .collect(),
                    outs: outs
                        .iter()
                        .map(|&v| (off(v), vals[v].shape.clone()))
                        .collect(),
                },
            });
        }
        let outputs = g
            .outputs
            .iter()
            .map(|&o| {
                let layout = if self.vals[o].kind == Kind::Blocked {
                    OutLayout::Blocked(geom(o, &self.vals))
                } else {
                    OutLayout::Nchw
                };
                (src(o, &self.vals), layout, self.vals[o].shape.clone())
            })
            .collect();
        let inputs = g
            .inputs
            .iter()
            .map(|&i| (g.values[i].name.clone(), g.values[i].shape.clone()))
            .collect();
        Ok(Plan {
            steps,
            names,
            arena,
            base,
            consts,
            inputs,
            outputs,
            macs,
        })
    }
}
