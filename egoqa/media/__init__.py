"""What a job shows the model: frame samplers' timestamps decoded from the clip, shots,
a claimed job rendered into a backend request, and the thumbnails the explorer shows.

May import `store`, `answers`, `plan` and `backends` (the request types); never `work` or later.
"""
