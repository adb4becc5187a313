"""The names a client of the exported SavedModel needs: signatures, inputs and outputs.

Kept free of TensorFlow so that the REST client (`serving_client.py`) imports only the
standard library; `export/saved_model.py` builds its signatures from the same names.
"""

SERVING_SIGNATURE, TENSOR_SIGNATURE = "serving_default", "image_tensor"
IMAGE_BYTES_INPUT, IMAGE_TENSOR_INPUT = "image_bytes", "images"  # the `_bytes` suffix marks binary data to REST
SERVING_OUTPUTS = ("probabilities", "classes", "labels", "scores")
MAX_TOP_K = 5  # k of the classes/labels/scores outputs: min(5, K), as the top-5 metric
