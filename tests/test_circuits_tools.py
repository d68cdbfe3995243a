"""train.py --head_probe, tools/plot_heads.py, tools/circuits.py, the logit lens and the escaped HTML report."""

import json

import torch

from conftest import one_line_error, run_script
from data.shakespeare_repeats.prepare import repeat_chunks, repeat_lines
from data.tokenizer import CharTokenizer
from lens import report, training_probe
from lens.logit_lens import logit_lens, top_tokens
from model import GPT, GPTConfig, save_checkpoint
from training.config import to_dict
from weights.common import IGNORE_INDEX


def test_head_probe_logs_scores_and_plot_draws_them(char_data, tmp_path):
    out = tmp_path / "out"
    run_script("train.py", f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=4", "--eval_interval=2",
               "--eval_iters=1", "--batch_size=4", "--block_size=32", "--n_layer=2", "--n_head=2", "--n_embd=16",
               "--attn_only=True", "--head_probe=True", "--device=cpu")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [0, 2, 4]
    for row in rows:
        heads = [v for k, v in row.items() if k.startswith("induction/L")]
        assert len(heads) == 4 and all(0 <= v <= 1 for v in heads) and row["induction_max"] == max(heads)
        assert isinstance(row["icl_score"], float) and "previous_token/L1H1" in row
        text = [v for k, v in row.items() if k.startswith("induction_text/L")]
        assert len(text) == 4 and all(0 <= v <= 1 for v in text) and row["induction_text_max"] == max(text)
    png = tmp_path / "heads.png"
    proc = run_script("tools/plot_heads.py", str(out), "-o", str(png))
    assert png.stat().st_size > 10_000 and "3 evaluations" in proc.stdout
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "metrics.jsonl").write_text(json.dumps({"iter": 0, "val_loss": 1.0}) + "\n")
    assert "head_probe" in one_line_error(run_script("tools/plot_heads.py", str(tmp_path / "plain"), check=False))


def test_induction_scores_on_given_halves_score_them_followed_by_themselves():
    from lens.detectors import detect_head, induction_scores

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=3, n_embd=24, vocab_size=13, block_size=20)).eval()
    halves = torch.randint(0, 13, (2, 10))
    expected = detect_head(model, torch.cat([halves, halves], dim=1), "induction_head")
    torch.testing.assert_close(induction_scores(model, halves=halves), expected)
    assert not torch.allclose(induction_scores(model, seq_len=10, batch=2), expected)  # random ids: others


def test_in_context_score_is_late_minus_early_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=11, block_size=32)).eval()
    idx, targets = torch.randint(0, 11, (3, 32)), torch.randint(0, 11, (3, 32))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(idx)[0].transpose(1, 2), targets, reduction="none")
        expected = loss[:, 30:].mean() - loss[:, 2:4].mean()  # T = 32: last 2 positions, positions [2, 4)
        assert abs(training_probe.in_context_score(model, idx, targets) - expected.item()) < 1e-6
        ignored = targets.clone()
        ignored[0, 30:] = ignored[1, 2] = IGNORE_INDEX  # left out of the means, not counted as zero loss
        late = loss[1:, 30:].mean()
        early = torch.cat([loss[0, 2:4], loss[1, 3:4], loss[2, 2:4]]).mean()
        assert abs(training_probe.in_context_score(model, idx, ignored) - (late - early).item()) < 1e-6


def test_repeated_chunks_keep_the_text_in_order_and_copy_it_10_to_120_characters_later():
    text = "".join(chr(0x100 + i) for i in range(3000))  # distinct characters: a repeat is a copy
    out = repeat_chunks(text)
    first, distances = {}, []
    for pos, char in enumerate(out):
        if char in first:
            distances.append(pos - first[char])
        else:
            first[char] = pos
    assert "".join(first) == text and len(out) == len(text) + len(distances)  # each character once or twice
    assert max(distances) <= 120 and sum(d < 10 for d in distances) < 10  # only a short last chunk is nearer
    assert 0.25 < len(distances) / len(out) < 0.45  # about a third of the output is copied
    assert repeat_chunks(text) == out and repeat_chunks(text, seed=1) != out
    assert repeat_lines("ab\n\ncd") == "ab\nab\ncd\ncd\n"


def tiny_checkpoint(folder):
    tokenizer = CharTokenizer.from_text("abcdefghiprst <&>\"'\n")
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=tokenizer.vocab_size, block_size=32)
    torch.manual_seed(0)
    save_checkpoint({"model": GPT(config).state_dict(), "model_type": "gpt", "model_args": to_dict(config),
                     "tokenizer": tokenizer.meta()}, str(folder / "ckpt.pt"))


def test_circuits_script_writes_an_escaped_report(tmp_path):
    tiny_checkpoint(tmp_path)
    reports = tmp_path / "report"
    proc = run_script("tools/circuits.py", f"--out_dir={tmp_path}", "--prompt=ab<script>cd ab<s", f"--report={reports}",
                      "--target=c", "--wrong=d", "--corrupt=hb<script>cd ab<s")
    for heading in ("direct logit attribution", "head detectors", "logit lens", "correlation"):
        assert heading in proc.stdout
    assert "BOS: none" in proc.stdout
    for name in ("head_detectors", "logit_lens", "attribution", "patch_resid_pre", "patch_heads", "attr_patch_heads",
                 "edge_circuit", "faithfulness"):
        assert (reports / f"{name}.png").stat().st_size > 5_000
    page = (reports / "circuits.html").read_text()
    assert "<td>&lt;</td>" in page and "<script>" not in page  # prompt tokens are text, never markup
    assert "edge circuit" in proc.stdout and "-&gt;" in page and "<q>" not in page  # edge names escaped too
    assert (reports / "attention.html").exists()
    assert "exactly one token" in one_line_error(run_script("tools/circuits.py", f"--out_dir={tmp_path}",
                                                            "--prompt=abc", "--target=ab", check=False))
    line = one_line_error(run_script("tools/circuits.py", f"--out_dir={tmp_path}", "--prompt=abcd", "--corrupt=abc",
                                     check=False))
    assert "same shape" in line
    assert "no BOS token" in one_line_error(run_script("tools/circuits.py", f"--out_dir={tmp_path}", "--prompt=abcd",
                                                       "--prepend_bos=True", check=False))
    assert "no checkpoint" in one_line_error(run_script("tools/circuits.py", f"--out_dir={tmp_path / 'none'}",
                                                        "--prompt=ab", check=False))


def test_logit_lens_ends_in_the_model_logits_and_html_is_escaped():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=13, block_size=16, bias=True)).eval()
    idx = torch.randint(0, 13, (2, 6))
    (logits, _), cache = model.run_with_cache(idx)
    lens = logit_lens(cache)
    assert lens.shape == (3, 2, 6, 13)
    torch.testing.assert_close(lens[-1], logits.detach(), atol=1e-5, rtol=0)
    ids, probs = top_tokens(lens, k=2)
    assert ids.shape == (3, 2, 6, 2) and (probs[..., 0] >= probs[..., 1]).all()
    table = report.html_table(["token"], [["<b>&"]])
    assert "&lt;b&gt;&amp;" in table and "<b>" not in table
    view = report.HTMLView(report.report_html("<t>", [("h", table)]))
    assert view._repr_html_().count("&lt;t&gt;") == 2


def test_circuits_script_prepends_bos_on_request_and_summarises_many_heads(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=13, n_embd=26, n_positions=16)).save_pretrained(tmp_path / "gpt2")
    proc = run_script("tools/circuits.py", f"--init_from={tmp_path / 'gpt2'}", "--prompt=When Mary and John",
                      "--prepend_bos=True", f"--report={tmp_path / 'report'}")
    assert "BOS: prepended '<|endoftext|>'" in proc.stdout and "prompt: 5 tokens" in proc.stdout
    section = proc.stdout.split("head detectors")[1].split("logit lens")[0]
    assert "top 5" in section and section.count("\n") < 10  # 26 heads: the five best per detector, not 26 rows
    assert (tmp_path / "report" / "head_detectors.png").stat().st_size > 5_000
