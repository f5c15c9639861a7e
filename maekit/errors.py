"""User-facing errors and their wording. The CLI prints a MaekitError as one line (no
traceback) and exits 2."""


class MaekitError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""


def error_text(e: MaekitError) -> str:
    """The one-line message of ``e``, also when a DataLoader worker raised it: torch re-raises
    a worker's exception as ``Caught ... in DataLoader worker process N. Original Traceback
    ... module.Class: message``; the message is its last line's text after the class name."""
    text = str(e)
    if not text.startswith("Caught "):
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number it takes: "1 image", "16 images" (``plural`` for nouns
    that do not just add an s: "1 class", "3 classes")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def is_out_of_memory(error: BaseException) -> bool:
    """A MemoryError, torch's CPU allocator failing ("can't allocate memory") or a CUDA
    out-of-memory error: the machine's limit, said in one line rather than a traceback."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )
