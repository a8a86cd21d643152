"""Label Studio's formats, in one place: label configs, the JSON of predict requests and annotations
(parsed into the model's terms), and the results the backend answers. Percentages of the image size
are Label Studio's coordinates; geometry.py is where they become pixels."""
