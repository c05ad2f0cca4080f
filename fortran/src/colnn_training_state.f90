!> What training adds to a network for one minibatch: the input of every layer and the output of
!> the last, kept by `forward_train` for `backward`, and the two gradient buffers `backward`
!> ping-pongs between. A network used for inference carries none of it; a trainer (or a C model
!> handle) owns one next to its network. The layers' own training arrays (Dense's pre-activation
!> and weight gradients, batch normalization's normalized inputs, dropout masks) stay in the
!> layers: their backward and get_grads need them, and the layer interface is the user's too.
module colnn_training_state
  use colnn_kinds, only: wp, i8
  use colnn_status
  use colnn_strings, only: str
  use colnn_layer, only: layer_t
  use colnn_network, only: network_t
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  implicit none
  private

  public :: training_state_t

  type :: activation_cache_t
    real(wp), allocatable :: a(:, :)
  end type activation_cache_t

  !> Caches of one network's last forward_train; sized on the first minibatch and kept while
  !> the minibatch size stays the same.
  type :: training_state_t
    !> acts(k): the input of layer k; acts(n_layers + 1): the network's output
    type(activation_cache_t), allocatable :: acts(:)
    !> dL/d(activations), (max_width, n_columns) each, flat so every layer sees its own shape
    real(wp), allocatable :: g_a(:), g_b(:)
    !> columns of the last forward_train (0: none yet)
    integer :: n_columns = 0
  contains
    procedure :: forward_train => training_state_forward_train
    procedure :: backward => training_state_backward
    procedure :: reset => training_state_reset
  end type training_state_t

contains

  !> Forgets the caches (the next backward needs a forward_train first).
  subroutine training_state_reset(self)
    class(training_state_t), intent(inout) :: self
    if (allocated(self%acts)) deallocate (self%acts)
    if (allocated(self%g_a)) deallocate (self%g_a, self%g_b)
    self%n_columns = 0
  end subroutine training_state_reset

  !> True when the caches have the shapes of `net`'s layers for nc columns.
  logical function fits(self, net, nc)
    type(training_state_t), intent(in) :: self
    type(network_t), intent(in) :: net
    integer, intent(in) :: nc
    integer :: k
    fits = .false.
    if (self%n_columns /= nc .or. .not. allocated(self%acts)) return
    if (size(self%acts) /= net%n_layers + 1) return
    if (size(self%acts(1)%a, 1) /= net%n_inputs) return
    if (size(self%g_a) < int(net%max_width, i8) * nc) return
    do k = 1, net%n_layers
      if (size(self%acts(k + 1)%a, 1) /= net%layers(k)%layer%n_out) return
    end do
    fits = .true.
  end function fits

  !> Training-mode forward (batch-norm batch statistics, dropout masks) of `net` on a minibatch
  !> x(n_inputs, nc); keeps every layer's input for `backward`.
  subroutine training_state_forward_train(self, net, x, y, stat, errmsg)
    class(training_state_t), intent(inout) :: self
    type(network_t), intent(inout) :: net  !! its layers keep what their backward needs
    real(wp), intent(in) :: x(:, :)        !! (n_inputs, nc)
    real(wp), intent(out) :: y(:, :)       !! (n_outputs, nc)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: nc, k
    stat = COLNN_OK
    errmsg = ''
    if (.not. net%is_loaded()) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'forward_train: no model is loaded'
      return
    end if
    nc = size(x, 2)
    if (size(x, 1) /= net%n_inputs .or. size(y, 1) /= net%n_outputs .or. size(y, 2) /= nc &
        .or. nc < 1) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'forward_train: expected x('//str(net%n_inputs)//', n >= 1) and y('// &
               str(net%n_outputs)//', n), got x('//str(size(x, 1))//', '//str(nc)//') and y('// &
               str(size(y, 1))//', '//str(size(y, 2))//')'
      return
    end if
    if (.not. all(ieee_is_finite(x))) then
      stat = COLNN_ERR_NONFINITE
      errmsg = 'forward_train: the minibatch has NaN or Inf inputs'
      return
    end if
    if (.not. fits(self, net, nc)) then
      call self%reset()
      allocate (self%acts(net%n_layers + 1))
      allocate (self%acts(1)%a(net%n_inputs, nc))
      do k = 1, net%n_layers
        allocate (self%acts(k + 1)%a(net%layers(k)%layer%n_out, nc))
      end do
      allocate (self%g_a(int(net%max_width, i8) * nc), self%g_b(int(net%max_width, i8) * nc))
      self%n_columns = nc
    end if
    self%acts(1)%a = x
    do k = 1, net%n_layers
      call net%layers(k)%layer%forward_train(nc, self%acts(k)%a, self%acts(k + 1)%a)
    end do
    y = self%acts(net%n_layers + 1)%a
  end subroutine training_state_forward_train

  !> Back-propagates dy = dL/dy(n_outputs, nc) of the last forward_train: every layer of `net`
  !> then holds the gradients of its trainable parameters; dx (optional) receives dL/dx. With
  !> `logits_gradient`, dy is dL/d(input of the final softmax) (the combined softmax +
  !> cross-entropy gradient, p - t), and the softmax itself is stepped over.
  subroutine training_state_backward(self, net, dy, stat, errmsg, dx, logits_gradient)
    class(training_state_t), intent(inout) :: self
    type(network_t), intent(inout) :: net  !! the network of the last forward_train
    real(wp), intent(in) :: dy(:, :)       !! (n_outputs, nc)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(wp), intent(out), optional :: dx(:, :)         !! (n_inputs, nc)
    logical, intent(in), optional :: logits_gradient    !! dy is dL/d(logits of the softmax)
    logical :: skip_softmax, in_a
    integer :: nc, k
    character(len=:), allocatable :: msg
    stat = COLNN_OK
    errmsg = ''
    nc = self%n_columns
    if (nc < 1) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'backward: no forward_train before'
      return
    end if
    if (.not. fits(self, net, nc)) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'backward: the last forward_train was of another network'
      return
    end if
    if (size(dy, 1) /= net%n_outputs .or. size(dy, 2) /= nc) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'backward: dy must be ('//str(net%n_outputs)//', '//str(nc)//'), got ('// &
               str(size(dy, 1))//', '//str(size(dy, 2))//')'
      return
    end if
    if (present(dx)) then
      if (size(dx, 1) /= net%n_inputs .or. size(dx, 2) /= nc) then
        stat = COLNN_ERR_ARGUMENT
        errmsg = 'backward: dx must be ('//str(net%n_inputs)//', '//str(nc)//')'
        return
      end if
    end if
    skip_softmax = .false.
    if (present(logits_gradient)) skip_softmax = logits_gradient .and. net%ends_in_softmax()
    call copy_in(net%n_outputs, nc, dy, self%g_a)
    in_a = .true.
    do k = net%n_layers, 1, -1
      associate (l => net%layers(k)%layer, at_logits => skip_softmax .and. k == net%n_layers)
        if (in_a) then
          call layer_backward(l, at_logits, nc, self%acts(k)%a, self%acts(k + 1)%a, self%g_a, &
                              self%g_b, stat, msg)
        else
          call layer_backward(l, at_logits, nc, self%acts(k)%a, self%acts(k + 1)%a, self%g_b, &
                              self%g_a, stat, msg)
        end if
        if (stat /= 0) then
          errmsg = "backward: layer '"//l%name//"': "//msg
          return
        end if
      end associate
      in_a = .not. in_a
    end do
    if (present(dx)) then
      if (in_a) then
        call copy_out(net%n_inputs, nc, self%g_a, dx)
      else
        call copy_out(net%n_inputs, nc, self%g_b, dx)
      end if
    end if
  end subroutine training_state_backward

  !> One layer's backward, from dL/dy or (at_logits) from dL/d(input of its final softmax).
  subroutine layer_backward(l, at_logits, nc, x, y, dy, dx, stat, errmsg)
    class(layer_t), intent(inout) :: l
    logical, intent(in) :: at_logits
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(l%n_in, nc), y(l%n_out, nc), dy(l%n_out, nc)
    real(wp), intent(out) :: dx(l%n_in, nc)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    if (at_logits) then
      call l%backward_logits(nc, x, y, dy, dx, stat, errmsg)
    else
      call l%backward(nc, x, y, dy, dx, stat, errmsg)
    end if
  end subroutine layer_backward

  !> The caller's (n, nc) array into the front of a flat gradient buffer, and back.
  subroutine copy_in(n, nc, x, a)
    integer, intent(in) :: n, nc
    real(wp), intent(in) :: x(:, :)
    real(wp), intent(out) :: a(n, nc)
    a = x
  end subroutine copy_in

  subroutine copy_out(n, nc, a, y)
    integer, intent(in) :: n, nc
    real(wp), intent(in) :: a(n, nc)
    real(wp), intent(inout) :: y(:, :)
    y = a
  end subroutine copy_out
end module colnn_training_state
