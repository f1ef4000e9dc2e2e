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

NEUTRAL: tuple[str, ...] = (
    "The capital of France is Paris, and the city lies on the river Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The meeting is scheduled for Tuesday at ten in the morning in room four.",
    "A triangle has three sides, and its angles add up to one hundred and eighty degrees.",
    "The library opens at nine and closes at six on weekdays.",
    "Copper is a good conductor of electricity and is used in most household wiring.",
    "The train from the north arrives at platform two every hour.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The report lists the sales figures for each quarter of last year.",
    "Mount Everest is the highest mountain above sea level on Earth.",
    "To reset the device, hold the power button for ten seconds.",
    "The museum has a collection of old maps, coins and tools.",
)
"""Neutral statements (no sentiment, no persona) for measuring the residual stream."""
