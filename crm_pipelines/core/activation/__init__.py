"""Activation: segments that react within minutes, lists and journeys in the marketing tool, engagement coming back.

Above the outlets' floor: journeys use the CRM (segment lists for sales) and print (a single-recipient
brochure) as channels beside the e-mail tool.
"""
