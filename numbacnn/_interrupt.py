"""Whether an exception is a Ctrl-C (or SIGTERM, which the command line turns into one) that
Python or a library re-raised as another error."""


def caused_by_ctrl_c(e):
    """True when `e` is a KeyboardInterrupt or one is in its chain of causes: a Ctrl-C that
    landed in code which wraps what it catches (Python 3.11 raises RuntimeError "Error calling
    __set_name__" from an interrupt during a class's creation, as in matplotlib's first import;
    Numba re-raises an interrupt of its compiler as its own error)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
