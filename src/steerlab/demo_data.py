"""A few neutral sentence openings shipped with steerlab, for the demo and quick experiments.

Example:
    >>> len(OPENINGS) >= 16
    True
"""

from __future__ import annotations

OPENINGS: tuple[str, ...] = (
    "That game",
    "I went to the store and",
    "My neighbour told me",
    "The weather this morning",
    "When I opened the letter",
    "Our teacher said",
    "The new phone",
    "Yesterday at work",
    "The movie ended and",
    "After dinner we",
    "The train was",
    "My brother called to say",
    "Looking out of the window,",
    "The results came in and",
    "At the party,",
    "The old house",
    "This book",
    "On my way home",
    "The meeting",
    "Her painting",
    "The garden looks",
    "Walking into the room,",
    "The concert last night",
    "I just finished the exam and",
)

DEMO_PROMPTS: tuple[str, ...] = ("That game", "I went to the store and", "My neighbour told me")
