"""egoqa: multi-turn prompting of vision-language models over Ego4D NLQ, as a resumable job system."""

__version__ = "0.1.0"
