"""bench/step_page.py: how a new step benchmark result joins the saved one, and its page."""

from __future__ import annotations


def test_a_precision_part_from_another_cpu_is_kept_when_the_step_benchmark_reruns_it():
    from bench.step_page import merge_parts

    amd = {"machine": {"cpu": "AMD EPYC", "cpu_bf16_flags": ["avx512_bf16"]}, "v": 1}
    xeon = {"machine": {"cpu": "Intel(R) Xeon(R) Processor", "cpu_bf16_flags": ["amx_bf16"]}, "v": 2}
    merged = merge_parts({"reference": "r", "precision": amd}, {"precision": xeon, "negatives": "n"}, ("precision",))
    assert merged["precision"] == xeon and merged["reference"] == "r" and "negatives" not in merged
    assert merged["precision_other_cpus"] == {"amd-epyc+avx512_bf16": amd}
    again = merge_parts(merged, {"precision": {**amd, "v": 3}}, ("precision",))  # back on the AMD: its old part goes
    assert again["precision"]["v"] == 3 and list(again["precision_other_cpus"].values()) == [xeon]
    full = merge_parts(again, {"reference": "r2", "precision": xeon}, ("reference", "precision"))  # a full run
    assert full["reference"] == "r2" and full["precision"] == xeon and "negatives" not in full
    assert list(full["precision_other_cpus"]) == ["amd-epyc+avx512_bf16"]
    assert merge_parts(None, {"precision": xeon}, ("precision",)) == {"precision": xeon}


def test_a_phases_part_from_another_cpu_is_kept_and_rendered_beside_the_new_one():
    from bench.step_page import merge_parts, render

    def phases(cpu: str, flag: str, step_ms: float) -> dict:
        from bench.epoch_phases import PHASES, summarise

        fp32 = dict.fromkeys(PHASES, step_ms / len(PHASES) / 1e3)
        auto = {p: s / 2 for p, s in fp32.items()}
        return {"machine": {"cpu": cpu, "cpu_bf16_flags": [flag]}, "epochs": 2, "steps_per_epoch": 3, "batch": 256,
                "queue_size": 4096, "views": 1, "resolved": {"auto": {"precision": "bf16", "memory_format": "x"}},
                "fp32": {"phases_s": fp32}, "auto": {"phases_s": auto}, **summarise(fp32, auto)}

    amd, xeon = phases("AMD EPYC", "avx512_bf16", 200.0), phases("Intel(R) Xeon(R) Processor", "amx_bf16", 280.0)
    merged = merge_parts({"phases": xeon, "precision": "p"}, {"phases": amd}, ("phases",))
    assert merged["phases"] == amd and merged["precision"] == "p" and "precision_other_cpus" not in merged
    assert list(merged["phases_other_cpus"].values()) == [xeon]
    page = "\n".join(render({"step_vs_reference": {"batch": 64, "queue_size": 4096, "ratio_ours_over_reference": 1,
                                                    "ratio_of_minimums": 1, **{k: {"min_s": 1, "median_s": 1,
                                                    "max_s": 1, "n": 1} for k in ("ours", "reference")}},
                               **{k: v for k, v in merged.items() if k != "precision"}}, None))
    amd_at, xeon_at = page.index("AMD EPYC"), page.index("Intel(R) Xeon(R) Processor")
    assert amd_at < xeon_at and "| **step** | 200.0 | 100.0 | 2.00x |" in page[:xeon_at]
    assert "| **step** | 280.0 | 140.0 | 2.00x |" in page[xeon_at:]
    again = merge_parts(merged, {"phases": {**xeon, "v": 2}}, ("phases",))  # back on the Xeon: its old part goes
    assert again["phases"]["v"] == 2 and list(again["phases_other_cpus"].values()) == [amd]
