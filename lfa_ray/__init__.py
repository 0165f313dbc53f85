"""lfa_ray: distributed training and tuning of the LFA read-window UNET on Ray."""

__version__ = "0.1.0"
