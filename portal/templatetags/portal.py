from django import template

from billing.money import format_money, format_quantity

register = template.Library()


@register.filter
def money(amount, currency):
    return format_money(amount, currency)


@register.filter
def quantity(value):
    return format_quantity(value)


@register.filter
def get(mapping, key):
    return mapping.get(key) if mapping else None
