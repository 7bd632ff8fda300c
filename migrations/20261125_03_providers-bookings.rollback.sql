DROP TABLE bookings;
DROP FUNCTION securenow_booking_reservation();
DROP TABLE provider_reservations;
DROP TABLE providers;
