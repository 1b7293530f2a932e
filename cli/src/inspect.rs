//! `thinker inspect`: what a model is and what it costs to run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use engine::model::{ComputeMode, Matrix, Model, ModelOptions, OffloadOptions};
use engine::offload::{MemoryBudget, OpenMode};

use crate::args::{DEFAULT_PLAN_BATCH, DEFAULT_PLAN_CONTEXT, human_bytes};

/// `thinker inspect` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A `.gguf` file or a Hugging Face directory.
    model: PathBuf,
    /// Hide the tensor table.
    #[arg(long)]
    no_tensors: bool,
    /// Show how this budget would be split (resident weights, KV, scratch, I/O, expert cache).
    #[arg(long = "memory-budget", value_name = "SIZE")]
    memory_budget: Option<MemoryBudget>,
    /// Context (positions) the budget's KV cache is planned for.
    #[arg(short = 'c', long = "ctx-size", default_value_t = DEFAULT_PLAN_CONTEXT)]
    ctx: usize,
    /// I/O threads of the plan.
    #[arg(long = "io-threads", default_value_t = 4)]
    io_threads: usize,
    /// Plan for the exact compute mode (the fast mode, the default, repacks down matrices).
    #[arg(long)]
    exact: bool,
    /// How expert reads would open the file: auto, direct or buffered.
    #[arg(long = "io-mode", default_value = "auto")]
    io_mode: OpenMode,
}

struct Row {
    name: String,
    ty: String,
    shape: String,
    bytes: u64,
}

fn row_of(m: &Matrix) -> Row {
    Row {
        name: m.name.clone(),
        ty: m.ty.name().to_string(),
        shape: format!("{} x {}", m.rows, m.cols),
        bytes: m.data.len() as u64,
    }
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let model = Model::load(
        &a.model,
        &ModelOptions {
            mode: ComputeMode::Exact,
            threads: 1,
            offload: None,
        },
    )
    .with_context(|| format!("cannot load model {}", a.model.display()))?;
    let c = &model.config;
    let w = &model.weights;
    println!("model          {}", a.model.display());
    println!(
        "shape          {} layers, hidden {}, heads {} (kv {}), head_dim {}, vocab {}",
        c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size
    );
    println!(
        "experts        {} per layer, top-{}, expert ffn {}, routing {:?}",
        c.n_experts, c.n_experts_used, c.expert_ffn, c.gating
    );
    println!(
        "attention      rope_theta {}, rms_eps {:e}, context {}, sliding window {}",
        c.rope_theta, c.rms_eps, c.context_length, c.sliding_window
    );
    let layout: String = c
        .layers
        .iter()
        .map(|k| match (k.rope, k.sliding) {
            (true, true) => 'S',
            (true, false) => 'R',
            (false, true) => 's',
            (false, false) => 'G',
        })
        .collect();
    println!(
        "layout         {layout}  (G = NoPE global, R = RoPE global, S = RoPE sliding, s = NoPE sliding; from {:?})",
        c.layout_source
    );
    println!(
        "embeddings     {}",
        if c.tied_embeddings {
            "tied"
        } else {
            "separate LM head"
        }
    );

    // Tensor table and byte accounting.
    let mut rows = vec![row_of(&w.embed)];
    if !c.tied_embeddings {
        rows.push(row_of(&w.lm_head));
    }
    let f32_vec = |name: String, n: usize| Row {
        name,
        ty: "F32".into(),
        shape: n.to_string(),
        bytes: (n * 4) as u64,
    };
    rows.push(f32_vec("output_norm".into(), w.output_norm.len()));
    let (mut attn, mut router, mut experts_total, mut expert_one) = (0u64, 0u64, 0u64, 0u64);
    for (l, lw) in w.layers.iter().enumerate() {
        rows.push(f32_vec(format!("blk.{l}.attn_norm"), lw.attn_norm.len()));
        for m in [&lw.wq, &lw.wk, &lw.wv, &lw.wo] {
            attn += m.data.len() as u64;
            rows.push(row_of(m));
        }
        rows.push(f32_vec(format!("blk.{l}.ffn_norm"), lw.ffn_norm.len()));
        router += lw.router.data.len() as u64;
        rows.push(row_of(&lw.router));
        for (e, ew) in lw.experts.iter().enumerate() {
            let b = (ew.gate.data.len() + ew.up.data.len() + ew.down.data.len()) as u64;
            experts_total += b;
            expert_one = expert_one.max(b);
            if e == 0 {
                rows.push(row_of(&ew.gate));
                rows.push(row_of(&ew.up));
                rows.push(row_of(&ew.down));
            }
        }
    }
    if !a.no_tensors {
        println!();
        println!(
            "{:<40} {:>6} {:>18} {:>12}",
            "tensor (experts: first shown)", "type", "rows x cols", "bytes"
        );
        for r in &rows {
            println!("{:<40} {:>6} {:>18} {:>12}", r.name, r.ty, r.shape, r.bytes);
        }
    }
    let embed_row = w.embed.row_bytes() as u64;
    let lm_head = w.lm_head.data.len() as u64;
    let norms = ((c.n_layers * 2 + 1) * c.hidden * 4) as u64;
    let total = w.embed.data.len() as u64
        + if c.tied_embeddings { 0 } else { lm_head }
        + attn
        + router
        + experts_total
        + norms;
    let active_experts = expert_one * (c.n_layers * c.n_experts_used) as u64;
    let per_token = embed_row + lm_head + attn + router + active_experts + norms;
    println!();
    println!("total weights  {} ({total} B)", human_bytes(total));
    println!(
        "per layer      one expert {}, all experts {}",
        human_bytes(expert_one),
        human_bytes(experts_total / c.n_layers.max(1) as u64)
    );
    println!(
        "per token      {} read (LM head {}, attention {}, routers {}, {} active experts {})",
        human_bytes(per_token),
        human_bytes(lm_head),
        human_bytes(attn),
        human_bytes(router),
        c.n_layers * c.n_experts_used,
        human_bytes(active_experts)
    );
    let kv_tok = (2 * c.kv_dim()) as u64; // keys + values, elements per position per layer
    let n_sliding = c.layers.iter().filter(|k| k.sliding).count();
    let n_global = c.n_layers - n_sliding;
    println!(
        "KV per token   {} per global layer, {} per sliding layer (f32; f16 halves it); {} global + {} sliding layers",
        human_bytes(kv_tok * 4),
        human_bytes(kv_tok * 4),
        n_global,
        n_sliding
    );
    if n_sliding > 0 {
        println!(
            "KV bound       sliding layers hold at most {} positions each ({} f32 per layer) whatever the context",
            c.sliding_window,
            human_bytes(kv_tok * 4 * c.sliding_window as u64)
        );
    }
    if let Some(budget) = a.memory_budget {
        let mut o = OffloadOptions::new(budget);
        o.context = a.ctx.max(1);
        o.max_batch = DEFAULT_PLAN_BATCH.min(o.context);
        o.io_threads = a.io_threads.max(1);
        o.open_mode = a.io_mode;
        let mode = if a.exact {
            ComputeMode::Exact
        } else {
            ComputeMode::Fast
        };
        let (plan, io) = model
            .memory_plan(mode, &o)
            .context("planning the memory budget")?;
        println!();
        println!("{plan}");
        println!("expert reads   {io}; context {} positions", o.context);
        if let Some(note) = crate::args::kv_note(&plan, o.context) {
            println!("note           {note}");
        }
        // The plan can be for another machine; here it would fail to load, so say so.
        if let Err(e) = plan.check_ceiling(engine::offload::budget::memory_ceiling()) {
            println!("note           loading with this budget here fails: {e}");
        }
    }
    Ok(())
}
