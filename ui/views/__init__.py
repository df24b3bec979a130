"""The app's views, one module each, composed by ``main_window.MainWindow``.

search.py, sort.py, teach.py — the tabs; preview.py, folders.py (sidebar), welcome.py; shared
widgets: grid.py (the photo grid and its delegate), buckets.py, actions.py (acting on results),
banner.py, tabs.py, dialogs.py; context.py holds what they share. A new view (duplicates, tags) is
one new module taking a ``Context`` and emitting signals, plus one ``addTab`` in the window.
"""
