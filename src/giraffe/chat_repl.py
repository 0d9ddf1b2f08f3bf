"""The terminal chat loop behind `giraffe chat`: multi-turn, streaming, slash commands.

Keeps the conversation as a list of {"role","content"} messages and hands it to
`LanguageModel.chat`; it knows nothing about templates or decoding internals.
"""

from __future__ import annotations

import time

from rich.console import Console

HELP = "/reset clears the conversation · /system TEXT sets the system message · /params [k=v ...] shows or sets decoding · /quit"


class ChatSession:
    def __init__(self, lm, system: str | None, decoding: dict, console: Console) -> None:
        self.lm, self.system, self.decoding, self.console = lm, system, dict(decoding), console
        self.messages: list[dict] = []

    def run(self) -> None:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                print()
                return
            if not line.strip():
                continue
            if line.startswith("/"):
                if not self.command(line.strip()):
                    return
                continue
            self.answer(line)

    def command(self, line: str) -> bool:
        name, _, rest = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.messages = []
            self.console.print("[dim]conversation cleared[/dim]")
        elif name == "/system":
            self.system = rest.strip() or None
            self.messages = []
            self.console.print(f"[dim]system message: {self.system!r}; conversation cleared[/dim]")
        elif name == "/params":
            self.set_params(rest.split())
        else:
            self.console.print(f"[dim]unknown command {name}. {HELP}[/dim]")
        return True

    def set_params(self, pairs: list[str]) -> None:
        updated = dict(self.decoding)
        try:
            for pair in pairs:
                key, _, value = pair.partition("=")
                updated[key.replace("-", "_")] = _parse(value)
            self.lm.decoding(**updated)  # validates before anything changes
        except ValueError as e:
            self.console.print(f"[red]{e}[/red]")
            return
        self.decoding = updated
        shown = {**self.lm.defaults, **self.decoding}
        self.console.print(f"[dim]decoding: {shown or 'model defaults'}[/dim]")

    def answer(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        convo = (
            [{"role": "system", "content": self.system}] if self.system else []
        ) + self.messages
        start, pieces = time.perf_counter(), []
        try:
            stream = self.lm.chat(convo, stream=True, **self.decoding)
            for piece in stream:
                pieces.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:  # stop this answer, keep the chat (and what was said)
            self.console.print("[dim] (stopped)[/dim]", end="")
        except ValueError as e:  # e.g. the conversation outgrew the context
            self.messages.pop()
            self.console.print(f"\n[red]{e}[/red]")
            return
        reply = "".join(pieces)
        n = len(self.lm.tokenizer.encode(reply))
        seconds = time.perf_counter() - start
        print()
        self.console.print(f"[dim]{n} tokens, {n / max(seconds, 1e-9):.1f} tokens/s[/dim]")
        self.messages.append({"role": "assistant", "content": reply})


def _parse(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)
