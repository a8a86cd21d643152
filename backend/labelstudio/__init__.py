"""Label Studio's formats, in one place: label configs, the results of predict requests and annotations
(typed in results.py, their coordinates checked by geometry.py, turned into the model's terms by parsing.py),
and the results the backend answers. Percentages of the image size are Label Studio's coordinates."""
