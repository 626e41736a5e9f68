"""imgrate: learn what makes a photographer's photos popular, and rank them honestly."""
