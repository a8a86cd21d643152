"""The agent: the policy looks at the image with the mask so far and acts, the tool applies the click."""
