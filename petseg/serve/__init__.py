"""`petseg serve`: the ensemble behind the nnInteractive remote protocol, for 3D Slicer
(SlicerNNInteractive) and napari (napari-nninteractive).

`studies` matches an uploaded volume (no geometry) to a study of the server's case folder
and maps indices between the upload's axes and the PET's; `lesions` keeps one reader's
case, clicks and the mask the viewer holds; `leases` hands out and reaps sessions;
`wire` checks the packed arrays and JSON bodies; `app` is the FastAPI application.
Nothing else in petseg imports this package.
"""
