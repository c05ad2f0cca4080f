"""harness: moves Keras neural networks into the Fortran library colnn and back.

The Python side reads Keras (``.keras``, ``.h5``) and FKB text files into a ``ModelSpec``,
writes the colnn text model file, and offers a numpy reference forward pass used to check the
Fortran library against Keras.
"""

__all__: list[str] = []
