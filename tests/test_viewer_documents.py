"""The viewer marks packed documents (--doc_mask): each token's document, a rule where one starts."""

import pytest
import torch

from lens.heatmaps import viewer_html, views_from_maps
from lens.views import document_numbers
from model import BERT, BERTConfig, GPT, GPTConfig
from test_viz import load_in_browser, page_data

# Hovers a query token of the second document, then the matrix cell of a query and a key of that document.
DOC_PROBE = """<pre id="probe"></pre><script>
const out = {};
try {
  const $$ = (sel) => [...document.querySelectorAll(sel)];
  document.querySelector(".cell[data-view='0'][data-layer='0'][data-head='0']")
    .dispatchEvent(new MouseEvent("click", {bubbles: true}));
  out.queryStarts = $$("#queries .tok.doc-start").map((s) => Number(s.dataset.index));
  out.keyStarts = $$("#keys .tok.doc-start").map((s) => Number(s.dataset.index));
  out.odd = $$("#queries .tok.doc-odd").map((s) => Number(s.dataset.index));
  out.note = document.getElementById("note").textContent;
  $$("#queries .tok")[5].dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
  out.info = document.getElementById("info").textContent;
  const matrix = document.querySelector("input[value=matrix]");
  matrix.checked = true; matrix.dispatchEvent(new Event("change"));
  out.matrixStarts = $$("#mqueries .mlabel.doc-start").length + "," + $$("#mkeys .mlabel.doc-start").length;
  const canvas = document.getElementById("matrix"), cell = Number(canvas.dataset.cell), box = canvas.getBoundingClientRect();
  canvas.dispatchEvent(new MouseEvent("mousemove", {bubbles: true, clientX: box.left + 1 * cell + 1,
                                                    clientY: box.top + 5 * cell + 1}));
  out.matrixInfo = document.getElementById("info").textContent;
} catch (e) { out.error = String(e) + " " + e.stack; }
out.errors = document.getElementById("errors").textContent;
document.getElementById("probe").textContent = JSON.stringify(out);
</script></body>"""


def packed_gpt_run():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    idx = torch.randint(1, 20, (1, 9))
    doc_ids = torch.tensor([[7, 7, 7, 7, 3, 3, 3, 9, 9]])  # any ids: three documents
    _, cache = model.run_with_cache(idx, doc_ids=doc_ids)
    return cache, [f"t{i}" for i in range(9)], doc_ids


def test_document_numbers_count_changes_of_id():
    assert document_numbers(torch.tensor([5, 5, 2, 2, 2, 5])) == [0, 0, 1, 1, 1, 2]
    assert document_numbers(torch.tensor([], dtype=torch.long)) == []


def test_views_number_documents_and_the_masked_maps_keep_within_them():
    cache, tokens, doc_ids = packed_gpt_run()
    (view,) = views_from_maps(cache, tokens, doc_ids=doc_ids)
    assert view.query_documents == view.key_documents == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    docs = torch.tensor(view.query_documents)
    across = (docs[:, None] != docs[None, :])
    assert all(maps[:, across.numpy()].max() == 0 for maps in view.layers.values())  # the model's own mask
    data = page_data(viewer_html([view]))
    assert data[0]["query_documents"] == view.query_documents and data[0]["key_documents"] == view.key_documents
    plain = views_from_maps(cache, tokens)[0]
    assert plain.query_documents is None and page_data(viewer_html([plain]))[0]["query_documents"] is None


def test_bert_padding_is_left_out_of_the_document_numbers():
    torch.manual_seed(0)
    model = BERT(BERTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    ids = torch.randint(1, 20, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, 2], [4, 5, 5, 5, 5, 5]])
    _, cache = model.run_with_cache(ids, attention_mask=mask, doc_ids=doc_ids)
    (view,) = views_from_maps(cache, [f"t{i}" for i in range(6)], batch_index=1, attention_mask=mask, doc_ids=doc_ids)
    assert view.query_documents == [0, 1, 1, 1] and len(view.query_tokens) == 4
    with pytest.raises(ValueError, match="pass the doc_ids the model was given"):
        views_from_maps(cache, [f"t{i}" for i in range(6)], batch_index=1, attention_mask=mask, doc_ids=doc_ids[:, :5])


def test_the_page_marks_where_each_document_starts_in_chromium(tmp_path):
    cache, tokens, doc_ids = packed_gpt_run()
    page = viewer_html(views_from_maps(cache, tokens, doc_ids=doc_ids))
    seen = load_in_browser(page, tmp_path, DOC_PROBE)
    assert "error" not in seen and seen["errors"] == "", seen
    assert seen["queryStarts"] == [4, 7] and seen["keyStarts"] == [4, 7]
    assert seen["odd"] == [4, 5, 6]  # the second document is shaded
    assert "3 packed documents" in seen["note"]
    assert seen["info"].startswith('query 5 "t5" (document 1): head 0 -> key ')
    assert seen["matrixStarts"] == "2,2"
    assert seen["matrixInfo"].startswith('query 5 "t5" (document 1) -> key 1 "t1" (document 0): 0.000')
