"""Keys act where the person looks: on the photo grid, never on a control they did not click into.

Two rules, applied to a window (and to widgets a view builds later, e.g. duplicate groups):

- Buttons, check boxes, combo boxes: reachable with Tab, but a click does not take the keyboard
  focus (``Qt.TabFocus``). So clicking Train, Retrain & apply or Find duplicates leaves the focus
  on the grid, and a button that turns itself off while it runs has no focus to hand on.
- Number boxes and sliders: focus only when clicked (``Qt.ClickFocus``), never by Tab or by a
  disabled widget passing its focus along: a grid key (1–9, A, R, arrows) never edits a number.

Text fields keep their focus policy (typing needs focus); scroll bars stay unfocusable.
"""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QSlider, QWidget


def keys_stay_on_content(root: QWidget) -> None:
    """Apply the two rules to ``root`` and every widget under it."""
    for w in (root, *root.findChildren(QWidget)):
        if isinstance(w, (QAbstractSpinBox, QSlider)):
            w.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        elif isinstance(w, QAbstractButton) or (isinstance(w, QComboBox) and not w.isEditable()):
            if w.focusPolicy() != Qt.FocusPolicy.NoFocus:
                w.setFocusPolicy(Qt.FocusPolicy.TabFocus)
