"""How a simulated tumour density explains an observation (masks, PET)."""
