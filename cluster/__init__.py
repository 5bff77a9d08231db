"""The Ray layer of faket: schedules FakET work on actors and moves data through Zarr stores.

The method lives in :mod:`faket`; this package only schedules and stores.
"""
