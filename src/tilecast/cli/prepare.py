"""``tilecast prepare``: Earth Engine's ``earthengine model prepare`` (needs ``tilecast[tf]``)."""

from __future__ import annotations

import click

from .options import overwrite_option, quiet_option, reports_errors


@click.command(short_help="Wrap a SavedModel for Earth Engine's tensor-string payloads.")
@click.option("--source-dir", required=True, type=click.Path(file_okay=False),
              help="The TensorFlow SavedModel to wrap.")
@click.option("--dest-dir", required=True, type=click.Path(file_okay=False),
              help="Where to write the wrapped model (its parent folder must exist).")
@click.option("--input", "inputs", required=True,
              help='Inputs: JSON {"graph_tensor": "ee_name"} (e.g. \'{"serving_default_image:0": "array"}\') or a '
                   "comma-separated list of signature keys that keep their names. Earth Engine input names are a "
                   "letter, then letters, digits or underscores.")
@click.option("--output", "outputs", required=True,
              help='Outputs, in the same form (e.g. \'{"StatefulPartitionedCall:0": "probs"}\').')
@click.option("--tag", default="serve", show_default=True, help="MetaGraph tag to load.")
@click.option("--signature", default="serving_default", show_default=True, help="Signature of the model to wrap.")
@overwrite_option
@quiet_option
@reports_errors
def prepare(source_dir: str, dest_dir: str, inputs: str, outputs: str, tag: str, signature: str, overwrite: bool,
            quiet: bool) -> None:
    """Wrap a SavedModel so its inputs and outputs are base64 TensorProto strings keyed by Earth Engine names.

    The result serves Earth Engine's SERIALIZED_TF_TENSORS payloads from TF Serving, Vertex AI or
    `tilecast serve`.

    \b
    Example:
      tilecast prepare --source-dir unet/ --dest-dir unet_ee/ \\
          --input '{"serving_default_image:0": "array"}' --output '{"StatefulPartitionedCall:0": "landcover"}'
    """
    from .._extras import require

    require("tensorflow", "tf")  # first: tilecast.serve (which holds prepare) would name only the server extra
    from ..serve.prepare import prepare_model

    path = prepare_model(source_dir, dest_dir, inputs, outputs, tag=tag, signature=signature, overwrite=overwrite)
    if not quiet:
        click.echo(f"Success: model at '{path}' is ready to be hosted (SERIALIZED_TF_TENSORS).", err=True)
