# Helpers shared by the rule library: carrying arbitrary text into an action through `env`.
#
# Text is handed to a command through environment variables rather than spliced into the command
# line, so that no character needs shell quoting (quotes, `$`, backslashes, newlines, non-ASCII
# text all arrive byte for byte), and so that the text is part of the action key like any
# declared variable. Two things cannot travel in one variable: a NUL character, and more than
# ~128 KiB. So a text is cut at every NUL into parts, and each part into chunks of at most
# CHUNK characters; each chunk is one variable PREFIX_<n>, and PREFIX_PARTS lists how many chunks
# each part has ("1 3 1"). `text_env` builds the variables, `shell_printf` the shell words that
# print the text again, and the Python snippet PY_DECODE rebuilds it in a `python3 -c` script.

CHUNK = 16384

def text_env(prefix, text):
    """The env entries that carry `text` under PREFIX_*."""
    env = {}
    counts = []
    n = 0
    for part in text.split("\0"):
        chunks = [part[i:i + CHUNK] for i in range(0, len(part), CHUNK)] or [""]
        counts.append(str(len(chunks)))
        for chunk in chunks:
            env["%s_%d" % (prefix, n)] = chunk
            n += 1
    env[prefix + "_PARTS"] = " ".join(counts)
    return env

def shell_printf(prefix, text):
    """A `{ ...; }` shell group that prints `text`, as carried by text_env(prefix, text)."""
    commands = []
    n = 0
    for index, part in enumerate(text.split("\0")):
        if index:
            commands.append("printf '\\000'")
        count = max(1, (len(part) + CHUNK - 1) // CHUNK)
        words = ["\"$$%s_%d\"" % (prefix, n + i) for i in range(count)]
        commands.append("printf '%s' " + " ".join(words))
        n += count
    return "{ " + "; ".join(commands) + "; }"

# def decode(prefix) -> str, in Python: the inverse of text_env.
PY_DECODE = """
import os
def decode(prefix):
    counts = [int(c) for c in os.environ[prefix + "_PARTS"].split()]
    parts, n = [], 0
    for count in counts:
        parts.append("".join(os.environ["%s_%d" % (prefix, n + i)] for i in range(count)))
        n += count
    return "\\0".join(parts)
"""

def check_name(rule, name):
    if type(name) != "string" or not name:
        fail("%s: 'name' must be a non-empty string" % rule)
