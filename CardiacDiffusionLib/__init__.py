"""CardiacDiffusionLib: the computing library behind the CardiacDiffusion Slicer extension.

No ``slicer``, ``qt`` or ``ctk`` import happens at module load: the library runs in plain Python,
in Slicer's Python and in a child process started by a Slicer module.
"""

__version__ = "0.1.0"
