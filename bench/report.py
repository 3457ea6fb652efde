"""The benchmark table: one row per figure, with its goal and whether this run met it."""
from __future__ import annotations

TRAINERS = {"dpo": "DPOTrainer", "kto": "KTOTrainer", "dynft": 'SFTTrainer(loss_type="dft")'}


def _versus_rows(name: str, v: dict) -> list[tuple]:
    """Throughput, memory, and token ids with the per-step losses, of ours against a TRL trainer."""
    method = v["method"].upper() if v["method"] != "dynft" else "Dynamic FT"
    label, goals = f"{method} vs TRL {TRAINERS[v['method']]} ({v['model']})", v.get("goals", {})

    def goal(prefix: str) -> tuple[str, object]:
        key = next((k for k in goals if k.startswith(prefix)), None)
        return (key, goals[key]) if key else ("", "")

    ours, trl = v["ours"], v["trl"]
    return [
        (f"{label}: tokens/s ours / TRL",
         f"{ours['tokens_per_s']:.0f} / {trl['tokens_per_s']:.0f} = {v['speedup']:.2f}x", *goal("tokens/s")),
        (f"{label}: peak RSS ours / TRL",
         f"{ours['peak_rss_bytes'] / 2**30:.2f} / {trl['peak_rss_bytes'] / 2**30:.2f} GiB = "
         f"{v['peak_memory_ratio']:.2f}x "
         f"(a step's own peak: {ours['step_peak_bytes'] / 2**20:.0f} / {trl['step_peak_bytes'] / 2**20:.0f} MiB = "
         f"{v['step_peak_ratio']:.2f}x)", *goal("peak memory")),
        (f"{label}: token ids; loss per step", f"{'identical' if v['same_token_ids'] else 'DIFFERENT'} (sha256 "
         f"{ours['rows_sha256'][:12]} / {trl['rows_sha256'][:12]}); max loss difference {v['max_loss_difference']:.1e} "
         f"over {len(ours['losses'])} steps (final {ours['losses'][-1]:.4f} / {trl['losses'][-1]:.4f})",
         "identical; <= 1e-4" if goals else "",
         goals["identical token ids"] and goals["equal loss at every step to 1e-4"] if goals else ""),
    ]


def _training_rows(r: dict) -> list[tuple]:
    rows = [row for name, v in r["versus_trl"].items() for row in _versus_rows(name, v)]
    for m, v in r["dft"].items():
        rows.append((f"DFT {m} tokens/s (bench-sized Llama)", f"{v['tokens_per_s']:.0f}", "", ""))
    f = r["flop_utilisation"]
    rows.append(("FLOP utilisation, DPO training (float32)", f"{f['model_flops_per_s'] / 1e9:.1f} / "
                 f"{f['peak_flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * f['utilisation']:.1f}%", ">= 50%", f["met"]))
    c = r["reference"]
    rows.append(("step: cached / live reference",
                 f"{c['cached_step_s']:.3f} / {c['live_step_s']:.3f} s = {c['ratio']:.2f}x", "<= 0.8x", c["met"]))
    return rows


def _precision_rows(pc: dict) -> list[tuple]:
    peaks = pc["matmul_peak_flops_per_s"]
    units = ", ".join(pc["cpu_bf16_units"]) or "none"
    rows = [("matmul peak fp32 / bf16",
             f"{peaks['fp32'] / 1e9:.0f} / {peaks['bf16'] / 1e9:.0f} GFLOP/s (CPU bf16 units: {units})", "", "")]
    for name, v in pc["variants"].items():
        rows.append((f"{pc['model']} DPO step {name}", f"{v['step_s']:.2f} s, step peak "
                     f"{v['step_peak_bytes'] / 2**20:.0f} MiB, {100 * v['utilisation']:.0f}% of its precision's peak",
                     "", ""))
    goals = pc["goals"]
    met = goals["bf16 mixed step <= 0.6x fp32 (where bf16 matmuls are faster)"]
    rows.append(("bf16 mixed / fp32 step time", f"{pc['bf16_over_fp32_step_time']:.2f}x",
                 "<= 0.6x where bf16 matmuls are >= 1.5x faster",
                 f"n/a: bf16 matmul peak {peaks['bf16'] / peaks['fp32']:.2f}x fp32's here" if met is None else met))
    rows.append(("FLOP utilisation fp32 / bf16 mixed step", f"{100 * pc['variants']['fp32']['utilisation']:.0f}% / "
                 f"{100 * pc['variants']['bf16_mixed']['utilisation']:.0f}%", ">= 50%",
                 goals["FLOP utilisation >= 50% of the precision's peak (fp32, bf16 mixed)"]))
    rows.append(("step peak: checkpointing / plain", f"{pc['checkpointing_over_plain_step_peak']:.2f}x", "<= 0.5x",
                 goals["activations with checkpointing <= 0.5x"]))
    return rows


def _generation_rows(g: dict) -> list[tuple]:
    if "vllm_over_hf" not in g:
        return [(f"generation {b}", g[b].get("skipped", ""), "", "") for b in ("hf", "vllm")]
    rows = []
    for n, ratio in g["vllm_over_hf"].items():
        hf, vllm = g["hf"]["runs"][n], g["vllm"]["runs"][n]
        rows.append((f"generation {g['model']}, {n} requests: vLLM / HF", f"{vllm['tokens_per_s']:.0f} / "
                     f"{hf['tokens_per_s']:.0f} tokens/s = {ratio:.2f}x ({vllm['requests_per_s']:.2f} / "
                     f"{hf['requests_per_s']:.2f} requests/s)", ">= 2x" if n == "256" else "",
                     g["met"] if n == "256" else ""))
    return rows


def _workflow_rows(r: dict) -> list[tuple]:
    rows = []
    for vocab, mem in r["loss_memory"].items():
        rows.append((f"label log-probs peak memory / logits {mem['shape']}",
                     f"chunked {mem['ours']['extra_peak_over_logits']:.2f}x, full log-softmax "
                     f"{mem['naive']['extra_peak_over_logits']:.2f}x", "<= 1.2x", mem["met"]))
    p = r["planning"]
    big = p["configs"][p["largest"]]
    rows.append((f"planning experiments/{p['largest']}.yaml", f"{big['jobs']} jobs in {big['seconds']:.1f} s", "< 10 s",
                 p["met"]))
    if "scale" in r:
        sizes = list(r["scale"]["sizes"])
        for stage, ratio in r["scale"]["per_record_cost_ratio"].items():
            costs = ", ".join(f"{int(n) // 1000}k: {r['scale']['sizes'][n][stage]['records_per_s']:.0f} rec/s, "
                              f"{r['scale']['sizes'][n][stage]['peak_rss_mb']:.0f} MB" for n in sizes)
            rows.append((f"{stage}: cost per record {int(sizes[-1]) // 1000}k / {int(sizes[0]) // 1000}k",
                         f"{ratio:.2f}x ({costs})", "<= 1.2x (linear or better)", ratio <= 1.2))
    if "embedded_default" in r:
        e = r["embedded_default"]
        rows.append(("embedded default", f"{e['wall_s'] / 60:.1f} min, {e['jobs']} jobs", "< 10 min",
                     e["wall_s"] < 600))
        rows.append(("no-op rerun", f"{e['noop_rerun']['jobs']} jobs in {e['noop_rerun']['seconds']:.1f} s", "0 jobs",
                     e["noop_rerun"]["jobs"] == 0))
        for rule, s in e["stages"].items():
            rows.append((f"  stage {rule}",
                         f"{s['jobs']} jobs, {s['seconds']:.0f} s summed, longest {s['longest']:.0f} s", "", ""))
    return rows


def table(r: dict) -> str:
    rows = _training_rows(r) + _precision_rows(r["precision"]) + _generation_rows(r["generation"]) + _workflow_rows(r)
    text = "| metric | value | goal | met |\n|---|---|---|---|\n"
    return text + "\n".join("| " + " | ".join(str(x) for x in row) + " |" for row in rows)
