"""Stage 3 of the loop: render the versioned prompt, generate a cited answer, and record the interaction."""
