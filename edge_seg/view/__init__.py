"""What a person sees: the overlay drawn on frames and the live preview page."""
