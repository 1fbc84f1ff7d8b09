"""Everything the offline demo needs, drawn or written by genlib itself (nothing is downloaded):

- :mod:`genlib.demo.faces`: procedurally drawn cartoon faces (the demo corpus's raw images);
- :mod:`genlib.demo.assets`: the demo corpus recipe and the painted style canvas.
"""
