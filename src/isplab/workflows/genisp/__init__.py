"""GenISP: a minimal neural ISP trained through a frozen object detector (``isplab genisp ...``)."""
