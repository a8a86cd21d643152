"""Quality: estimates of a mask's IoU (offline or by the policy), and the corruptions that test them."""
