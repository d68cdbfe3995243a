"""The HTML attention viewer: one self-contained page (no network) built from the files in lens/assets/.

Its style, script and data are inlined into viewer.html; token text reaches the page only as JSON
read with textContent.
"""

import base64
import html
import json
import os
import re

import numpy as np

from lens.views import AttentionView

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def read_asset(name: str) -> str:
    """The text of one file in lens/assets/."""
    with open(os.path.join(ASSETS, name), encoding="utf-8") as f:
        return f.read()


def viewer_html(views: list[AttentionView], title: str = "attention") -> str:
    """A self-contained HTML page showing the views (weights stored as bytes: value * 255)."""
    data = []
    for view in views:
        layers = []
        for name, maps in view.layers.items():
            quantized = np.clip(np.rint(maps * 255.0), 0, 255).astype(np.uint8)
            layers.append({"name": name, "n_head": int(maps.shape[0]),
                           "weights": base64.b64encode(quantized.tobytes()).decode("ascii")})
        data.append({"title": view.title, "queries": view.query_tokens, "keys": view.key_tokens, "layers": layers})
    payload = json.dumps(data, ensure_ascii=True)
    # inside <script>, "</script>" or "<!--" in a token would end or confuse the element: escape the brackets
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    fields = {"__TITLE__": html.escape(title), "__DATA__": payload,  # one pass: a title may say "__DATA__"
              "__STYLE__": read_asset("viewer.css"), "__SCRIPT__": read_asset("viewer.js")}
    return re.sub("__TITLE__|__DATA__|__STYLE__|__SCRIPT__", lambda m: fields[m.group()], read_asset("viewer.html"))
