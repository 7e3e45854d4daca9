"""Stage 4 of the loop: people (and automatic raters) judge recorded answers; a review queue decides what
they look at first."""
